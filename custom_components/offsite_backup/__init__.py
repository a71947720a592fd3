"""The Offsite Backup integration: nightly off-site backups through a signing gateway."""
