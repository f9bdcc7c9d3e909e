"""The sidecar's text: its own spelling of keys and scalars must be json's,
byte for byte (the file is read back with json.loads, and a slot's crc is
over these bytes)."""
import json

from thinp.thin.sidecar import decode_slot, encode_slot, sidecar_text


def _json_per_key(side):
    return "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(side[k], sort_keys=True)}"
                              for k in sorted(side)) + "\n}\n"


SIDES = [
    {"version": 1, "transaction_id": 0, "error_if_no_space": False, "sync": True, "split": "current",
     "devices": {"0": 2147483648, "10": 8, "2": 0}, "commit": [1, 2, 3, 4], "low_water_mark": 32768,
     "commit_interval": 1_000_000, "seq": 12, "previous": None},
    {"big": (1 << 64) - 1, "neg": -5, "f": 0.1, "inf": float("inf"), "s": 'a "quoted"\\ line\n\u00e9',
     "nested": {"b": [True, None, {"z": 1, "a": 2}], "a": "x"}, "empty": {}, "e": [],
     "k\u00e9y": 1, "with space": 2, "quote\"key": 3, "_u": True, "x9": None},
]


def test_sidecar_text_is_json_per_key():
    for side in SIDES:
        text = sidecar_text(side)
        assert text == _json_per_key(side)
        assert json.loads(text) == json.loads(_json_per_key(side))


def test_a_slot_round_trips():
    side = dict(SIDES[0])
    side.pop("previous")
    assert decode_slot(encode_slot(side)) == side
