"""What auditq is measured against: the bare minimum a user could write for the same job."""
