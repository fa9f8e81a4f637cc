import pytest

from ad import space as space_lib
from ad.space import Arch, DesignSpace


def test_table1_space_has_576_architectures():
  space = DesignSpace()
  assert len(space) == 576
  assert space.hidden == (128, 256, 384, 512)  # 003 Table 1's "246" read as 256
  assert len(set(space.archs())) == 576


def test_name_round_trip():
  a = Arch.parse("512_128_1_640_2")
  assert (a.hidden, a.bottleneck, a.heads, a.intermediate, a.num_ffn) == (512, 128, 1, 640, 2)
  assert a.name == "512_128_1_640_2" and str(a) == a.name
  assert all(Arch.parse(x.name) == x for x in DesignSpace().archs())


@pytest.mark.parametrize("bad", ["512_128_4_512", "512-128-4-512-4", "a_b_c_d_e", "", "512_128_4_512_4_1"])
def test_malformed_names_are_rejected(bad):
  with pytest.raises(ValueError, match="malformed architecture name"):
    Arch.parse(bad)


def test_heads_must_divide_bottleneck():
  with pytest.raises(ValueError, match="heads=3 does not divide bottleneck=128"):
    Arch.parse("512_128_3_512_4")


def test_values_outside_the_space_name_the_factor():
  with pytest.raises(ValueError, match=r"intermediate=768 is outside the design space; allowed \[384, 512, 640\]"):
    DesignSpace().check("512_128_4_768_4")


def test_space_is_configurable_and_drops_indivisible_heads():
  space = DesignSpace(hidden=(128,), bottleneck=(96,), heads=(1, 2, 4, 8), intermediate=(384,), num_ffn=(2,))
  # 96 / 8 = 12 is fine; all four head counts divide 96.
  assert [a.heads for a in space.archs()] == [1, 2, 4, 8]
  space = DesignSpace(hidden=(128,), bottleneck=(96,), heads=(5, 8), intermediate=(384,), num_ffn=(2,))
  assert [a.heads for a in space.archs()] == [8]
  assert "1 dropped" in space.describe()


def test_space_from_config_rejects_unknown_keys():
  with pytest.raises(ValueError, match="unknown keys"):
    DesignSpace.from_config({"hidden": [128], "hiden": [1]})


def test_encode_decode_round_trip_and_range():
  space = DesignSpace()
  archs = space.archs()
  x = space.encode(archs)
  assert x.shape == (576, 5) and x.min() == 0.0 and x.max() == 1.0
  assert space.decode(x) == archs


def test_parse_archs_accepts_comma_lists():
  assert space_lib.parse_archs("512_128_4_512_4,128_64_1_384_2") == [space_lib.MOBILEBERT, Arch(128, 64, 1, 384, 2)]
