"""Read the history of an offline W&B run back from its ``run-*.wandb`` file (tests only).

The file is a LevelDB-style log (a 7-byte header ``:W&B`` + magic + version, then 32 KiB blocks
of records: crc32 (4 bytes), length (2), type (1: full, 2: first, 3: middle, 4: last), data),
each record a ``wandb_internal_pb2.Record``; ``history`` records hold the logged rows.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

_BLOCK = 32768
_HEADER = 7


def _records(raw: bytes) -> list[bytes]:
    if raw[:4] != b":W&B":
        raise ValueError("not a W&B run file")
    pos, buf, out = _HEADER, b"", []
    while pos + _HEADER <= len(raw):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", raw[pos:pos + _HEADER])
        pos += _HEADER
        if kind == 0 and n == 0:  # zero padding to the end of the block
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
            continue
        data, pos = raw[pos:pos + n], pos + n
        if kind == 1:
            out.append(data)
        elif kind == 2:
            buf = data
        elif kind == 3:
            buf += data
        elif kind == 4:
            out.append(buf + data)
    return out


def history(run_dir: str | Path, timeout: float = 60.0) -> list[dict]:
    """The logged rows of the offline run in ``run_dir`` (``.../wandb/offline-run-*``).

    W&B's service process writes the file after ``run.finish()`` returns (measured here: the
    file sometimes still held only its header), so this waits for the run's ``exit`` record.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(run_dir).glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        records = []
        for data in _records(path.read_bytes()):
            rec = pb.Record()
            try:
                rec.ParseFromString(data)
            except Exception:  # noqa: BLE001 (a record still being written: read again)
                break
            records.append(rec)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} has no exit record after {timeout} s")
        time.sleep(0.2)
    return [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]
