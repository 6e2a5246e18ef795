"""libvirt: a Plan as libvirt domain XML (:mod:`pvhvm.libvirt.xml`)."""
