"""The normative text, schemas and test vectors, shipped as package data of vera_ref (see vera_ref.resources)."""
