"""The writer writes the metadata document with ``json.dumps(doc, sort_keys=True, indent=None)``'s
default separators (", " and ": "): valid JSON, not the canonical form.

Spec 4.3: writers MUST write the canonical form (keys sorted, no insignificant whitespace, ASCII
with backslash-u escapes). Every reader still reads the file, so a round trip through LoadedAdapter cannot
see it; only the bytes can.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "4.3"
AREA = "writer"
EXPECT = "caught"


def make():
    return reference_impl(lib=[('metadata.py', 'separators=(",", ":"), ensure_ascii=True,',
                                'separators=(", ", ": "), ensure_ascii=True,')],
                          name='planted: non-canonical JSON separators')
