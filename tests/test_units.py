"""Sizes, counts and signed differences as printed."""

import pytest

from expertcache.units import count_text, signed_text, size_text


@pytest.mark.parametrize("n,text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (143360, "140.0 KiB"),
                                    (2**20, "1.0 MiB"), (3 * 2**30, "3.0 GiB")])
def test_size_in_the_largest_unit_reached(n, text):
    assert size_text(n) == text  # the report said "0.00 GiB" for a cache of 140 KiB


@pytest.mark.parametrize("value,text", [(-0.04, "+0.0"), (0.0, "+0.0"), (-0.06, "-0.1"), (9.94, "+9.9"),
                                        (-12.5, "-12.5")])
def test_a_difference_that_rounds_to_zero_has_no_minus_sign(value, text):
    assert signed_text(value) == text  # the report said "-0.0 points over shuffled tokens"


@pytest.mark.parametrize("n,text", [(0, "0 tokens"), (1, "1 token"), (2, "2 tokens")])
def test_a_count_takes_its_noun_in_the_right_number(n, text):
    assert count_text(n, "token") == text  # the report said "1 tokens in 1 sequence"
