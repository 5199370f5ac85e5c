"""Stage 4, governance: the gate's decision, approvals and registry aliases, the audit trail, lineage and the model card."""
