"""Realise a Plan on QEMU: argv, accelerator choice, launch and QMP."""
