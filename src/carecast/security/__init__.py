"""Who may do what: users and passwords, API tokens, permissions, patient access, and the audit trail."""
