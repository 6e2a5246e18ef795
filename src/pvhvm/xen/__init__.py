"""Realise a Plan for Xen: xenbus device nodes in XenStore, and xl.cfg export."""
