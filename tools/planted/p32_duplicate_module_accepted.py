"""The reader accepts a module listed twice (the later entry silently wins in a dict).

Spec 4.6 step 16 (E4.6.16.6): module paths are unique.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "4.6 step 16"
AREA = "reader"
EXPECT = "caught"


def make():
    return reference_impl(lib=[('metadata.py', '        if full in seen:\n',
                                '        if False:  # planted\n')],
                          name='planted: duplicate modules accepted')
