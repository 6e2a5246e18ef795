"""Planning: a pure step from DomainConfig to a Plan with every default decided."""
