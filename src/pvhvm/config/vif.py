"""The ``vif=`` spec grammar (xl-network-configuration(5), as xm used it).

``key=value,...`` with keys ``mac bridge ip script type vifname rate model backend``; any other
key is an error, and ``''`` is a vif with every default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pvhvm.config.optstr import brief, tokenize
from pvhvm.errors import SpecError

KEYS = ("mac", "bridge", "ip", "script", "type", "vifname", "rate", "model", "backend")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


@dataclass(frozen=True)
class VifSpec:
    """One parsed ``vif=`` entry; unset fields are decided by the planner."""

    mac: str | None = None
    bridge: str | None = None
    ip: str | None = None
    script: str | None = None
    type: str | None = None
    vifname: str | None = None
    rate: str | None = None
    model: str | None = None
    backend: str | None = None


def normalise_mac(text: str, where: str) -> str:
    """Lower-case ``aa:bb:cc:dd:ee:ff``; refuse malformed, all-zero and multicast addresses."""
    if not _MAC.match(text):
        raise SpecError(f"{where}: MAC address {text!r} is not six hex octets (aa:bb:cc:dd:ee:ff)")
    mac = text.lower()
    if mac == "00:00:00:00:00:00":
        # QEMU takes an all-zero MAC as "none given" and uses its own default instead.
        raise SpecError(f"{where}: MAC address {text!r} is all zeros, not an address")
    if int(mac[:2], 16) & 1:
        raise SpecError(
            f"{where}: MAC address {text!r} is a multicast address (the first octet is odd)"
        )
    return mac


def parse_vif(spec: str) -> VifSpec:
    """Parse one ``vif=`` entry; raise SpecError naming the bad item and what is allowed."""
    if not isinstance(spec, str):
        raise SpecError(f"vif entry {brief(spec)} is not a string")
    where = f"vif spec {spec!r}"
    fields: dict[str, str] = {}
    for tok in tokenize(spec):
        if tok.key is None:
            if tok.value == "":
                continue
            raise SpecError(f"{where}: {tok.value!r} is not key=value (keys: {', '.join(KEYS)})")
        if tok.key not in KEYS:
            raise SpecError(f"{where}: unknown key {tok.key!r} (known: {', '.join(KEYS)})")
        if tok.key in fields:
            raise SpecError(f"{where}: {tok.key} given twice")
        if tok.value == "":
            raise SpecError(f"{where}: {tok.key}= needs a value")
        fields[tok.key] = tok.value
    if "mac" in fields:
        fields["mac"] = normalise_mac(fields["mac"], where)
    return VifSpec(**fields)


def format_vif(vif: VifSpec) -> str:
    """The canonical string of ``vif``; ``parse_vif`` gives ``vif`` back."""
    return ",".join(
        f"{key}={getattr(vif, key)}" for key in KEYS if getattr(vif, key) is not None
    )
