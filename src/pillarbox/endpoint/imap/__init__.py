"""IMAP4rev1 endpoint (RFC 3501 and common extensions).

parser   -- the command grammar: tags, atoms, strings, literals, sequence sets
mime     -- MIME structure on raw bytes (sections, ENVELOPE, BODYSTRUCTURE)
session  -- the protocol state machine, one per connection
"""
