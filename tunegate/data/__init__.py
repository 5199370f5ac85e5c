"""Stage 1, data: instruction data in any common format to canonical chat records, checked (GE), versioned (md5)."""
