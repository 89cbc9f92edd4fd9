"""tests/ports: implementations of the spec in other languages, built and checked against spec/vectors."""
