"""Plain domain records and the clinical variable catalogue. No I/O, no framework imports."""
