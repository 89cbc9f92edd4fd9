"""The reader checks the modules (step 16) before the sharing (step 15).

Both rules are right; only their order differs, so a file with a bad sharing and a bad module
gets another code. Spec 4.6: the first failing rule in step order decides the code. The
multi-fault vectors for steps 15/16 (a bad sharing, 15.2 or 15.3, and a bad module entry or
prefix in one file: verdict E4.6.15.x) tell it from the reference.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "4.6 steps 15-16"
AREA = "reader"
EXPECT = "caught"


def make():
    return reference_impl(lib=[('metadata.py',
                                '    sharing = _choice(doc, "sharing", SHARING, "E4.6.15.1", "E4.6.15.2")\n',
                                '    modules = _modules(doc)  # planted: step 16 before step 15\n    sharing = '
                                '_choice(doc, "sharing", SHARING, "E4.6.15.1", "E4.6.15.2")\n')],
                          name='planted: step 16 before step 15')
