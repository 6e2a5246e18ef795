"""The guest image kit: a small Debian-kernel + busybox guest that reports the devices it sees.

- :mod:`pvhvm.guest.kit` builds the kit (``build_kit``) and knows its outputs (``Kit``);
- :mod:`pvhvm.guest.report` parses the device report the guest prints (``parse_report``);
- :mod:`pvhvm.guest.debs`, :mod:`~pvhvm.guest.modules`, :mod:`~pvhvm.guest.initramfs`,
  :mod:`~pvhvm.guest.rootfs`, :mod:`~pvhvm.guest.bootdisk` are its steps.
"""
