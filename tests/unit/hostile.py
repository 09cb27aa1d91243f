# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Hypothesis strategies for the input a hostile operator (or API server) gives the modules: text with
control characters and tool syntax spliced in, numbers at and beyond every limit, values of the wrong
type. The property tests draw from these; every one is bounded (max_examples, no deadline) so the
whole suite stays within minutes."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# One profile for every property test: no example database written into the checkout, no deadline
# (a module run in a network namespace takes a few hundred milliseconds), and a blob to replay a failure.
settings.register_profile("kubeipvs", database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("kubeipvs")

# Characters that end a line or a word somewhere: for a tool, for Python's splitlines(), for C.
BREAKERS = ["\n", "\r", "\r\n", "\x00", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\t",
            "\x7f", "\u200b", "\u202e", "\ufeff", " ", ";", "#", '"', "'", "\\", "{", "}", ",", ":", "/", "%", "-"]
# Text a tool would obey if it reached it as syntax.
PAYLOADS = ["flush ruleset", "}\nflush ruleset\ntable ip x {", 'include "/etc/passwd"', "destroy FOREIGN",
            "flush FOREIGN", "-F FOREIGN", "COMMIT", "-X", "timeout 5", "nomatch", "physdev:", "1e400",
            "Infinity", "NaN", "-1", "0x-1", "fe80::1%eth0", "10.0.0.1\n", "$(reboot)", "`id`", "../../etc/x",
            "\x00-j DROP", "²", "٣", "0" * 40]

breakers = st.sampled_from(BREAKERS)
payloads = st.sampled_from(PAYLOADS)


def hostile_text(base=None, max_size=40):
    """Text that is sometimes fine and often not: ``base`` (a strategy of valid-looking text, or any
    printable text) with breakers and payloads spliced in anywhere."""
    base = base if base is not None else st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)
    part = st.one_of(base, breakers, payloads, st.text(max_size=max_size))
    return st.lists(part, min_size=1, max_size=4).map("".join)


# Numbers at and around every limit the modules know, and beyond.
LIMITS = [0, 1, -1, 31, 32, 63, 64, 255, 256, 1023, 1024, 65535, 65536, 86400, 86401, 2147483, 2147484,
          2 ** 16, 2 ** 28, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 63, 10 ** 30, -(2 ** 63)]
hostile_numbers = st.one_of(
    st.sampled_from(LIMITS),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e400, 1.5, -0.0]),
    st.booleans(),
)
wrong_types = st.one_of(st.none(), st.booleans(), st.lists(st.integers(), max_size=3),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.floats())


def anything(base=None):
    """Hostile text, hostile numbers or a value of the wrong type."""
    return st.one_of(hostile_text(base), hostile_numbers, wrong_types)


def deeply_nested(depth):
    """A list nested ``depth`` times (what a services file may hold)."""
    value = []
    for _level in range(depth):
        value = [value]
    return value
