"""The client commands: they talk to the auditq API over HTTP."""
