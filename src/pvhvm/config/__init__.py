"""Config files: the safe config language, the disk/vif spec grammar, DomainConfig."""
