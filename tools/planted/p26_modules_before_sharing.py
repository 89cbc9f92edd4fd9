"""The reader checks the modules (step 16) before the sharing (step 15).

Both rules are right; only their order differs, so a file with a bad sharing and a bad module
gets another code. Spec 4.6: the first failing rule in step order decides the code.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "4.6 steps 15-16"
AREA = "reader"
EXPECT = "caught"
WHY_ESCAPES = ("No invalid vector fails both step 15 and step 16. The multi-fault vectors pin some pairs of "
               "steps (8/12, 11/12, 14/18, 23/24, 24/25, 25/26) and the orders inside steps 16, 17, 20, 21 and 23, "
               "not this pair, so a reader that swaps steps 15 and 16 gives the same verdict on every vector. "
               "Missing: a multi-fault vector for each pair of adjacent steps of 4.6, here a bad sharing and a "
               "bad module entry in one file (verdict E4.6.15.x)")


def make():
    return reference_impl(lib=[('metadata.py',
                                '    sharing = _choice(doc, "sharing", SHARING, "E4.6.15.1", "E4.6.15.2")\n',
                                '    modules = _modules(doc)  # planted: step 16 before step 15\n    sharing = '
                                '_choice(doc, "sharing", SHARING, "E4.6.15.1", "E4.6.15.2")\n')],
                          name='planted: step 16 before step 15')
