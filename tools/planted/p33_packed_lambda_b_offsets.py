"""The packed layout's lambda_b is read from offset 0 for every module (the running offset is
never added).

Spec 4.4: in ``packed`` layout module i's lambda_b follows module i-1's.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "4.4"
AREA = "reader"
EXPECT = "caught"


def make():
    return reference_impl(lib=[('adapter.py', 'tensors[PACKED_B].data[e - m.out_features: e]',
                                'tensors[PACKED_B].data[:m.out_features]')],
                          name='planted: packed lambda_b read from offset 0')
