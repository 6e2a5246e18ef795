"""pvhvm: HVM guests whose every disk and NIC is deterministically emulated or paravirtual.

Data flows one way: config file -> DomainConfig -> Plan -> a realiser (QEMU argv, XenStore
nodes, xl.cfg) -> a running domain.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
