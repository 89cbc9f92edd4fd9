"""Step 24 rule by rule: the shapes of all tensors first, then their dtypes, instead of tensor by
tensor (shape then dtype of each before the next).

Spec 4.6 step 24 (1.2 pins the order); a file whose first tensor has a wrong dtype and whose
second has a wrong shape gets E4.6.24.1 instead of E4.6.24.2.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "4.6 step 24"
AREA = "reader"
EXPECT = "caught"


def make():
    return reference_impl(lib=[("adapter.py", "    for t in expected:\n        dtype, shape = entries[t.name][:2]\n",
                                "    for t in expected:  # planted: every shape first\n"
                                "        dtype, shape = entries[t.name][:2]\n"
                                "        if t.shape is not None and tuple(shape) != t.shape:\n"
                                "            fail(\"E4.6.24.1\", t.name, shape=list(shape), expected=list(t.shape))\n"
                                "    for t in expected:\n"
                                "        dtype, shape = entries[t.name][:2]\n")],
                          name="planted: step 24 rule by rule")
