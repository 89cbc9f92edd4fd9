"""The reader takes ``r: 4.0`` (and n_in / n_out written as 4.0) as the integer 4, as
``int(doc["r"])`` after ``json.loads`` does.

Spec 4.3 (1.2: an integer is a JSON number literal without fraction or exponent) and 4.6 step 12
(E4.6.12.2) / 17.
"""
from _plant import reference_impl

CLAUSE = "4.6 step 12"
AREA = "reader"
EXPECT = "caught"


def make():
    return reference_impl(lib=[("metadata.py",
                                "    if not _is_int(v) or v < 1:\n        fail(bad, json=v)\n    return v\n",
                                "    if isinstance(v, float) and v.is_integer():  # planted: 4.0 is 4\n"
                                "        v = int(v)\n"
                                "    if not _is_int(v) or v < 1:\n        fail(bad, json=v)\n    return v\n")],
                          name="planted: integral floats accepted as integers")
