"""Shard framing read from any binary file object: TFRecord records and text lines, a chunk at a time.

Shards in a bucket are read through tfscale's storage layer (:func:`orchestrator.artifacts.storage.open_stream`),
not through TensorFlow's filesystems: TensorFlow's GCS client ignores ``STORAGE_EMULATOR_HOST`` and TensorFlow
no longer ships an S3 filesystem. tf.data's own readers only read TensorFlow's filesystems, so the framing is
read here and the records handed to tf.data (``Dataset.from_generator``), which parses them as it parses
local files.

A TFRecord file is a sequence of::

    uint64 length (little endian) | uint32 masked crc32c(length) | data[length] | uint32 masked crc32c(data)

Both checksums are verified, so a corrupted or truncated shard fails with :class:`CorruptRecordError`
naming the file and the byte offset, never with a wrong record. Memory holds one chunk (and at most one
record that spans chunks): the shard is never read whole, nor copied to local disk.
"""
from __future__ import annotations

import struct
from typing import BinaryIO, Iterator, List

#: Bytes asked of the store per read: large sequential reads, bounded memory per open shard.
CHUNK_BYTES = 2 << 20
_HEADER = struct.Struct("<QI")
_CRC = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8


class CorruptRecordError(ValueError):
    """A shard's framing is damaged: a length or data checksum does not match, or the file ends mid-record."""


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data`` (the checksum rotated and offset, as TensorFlow writes it)."""
    import google_crc32c  # C implementation; installed with the storage extra (google-cloud-storage needs it)

    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def tfrecord_chunks(stream: BinaryIO, name: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[List[bytes]]:
    """The records of a TFRecord file, in order, as lists: the complete records of each chunk read.

    ``name`` (the file's URI) is what an error names. Lists rather than single records: handing tf.data one
    record at a time would cost a Python call per record.
    """
    buf, pos, base = b"", 0, 0  # base: the file offset of buf[0]
    while True:
        data = stream.read(chunk_bytes)
        if not data:
            break
        base += pos
        buf, pos = buf[pos:] + data, 0
        out: List[bytes] = []
        end = len(buf)
        while end - pos >= _HEADER.size:
            length, length_crc = _HEADER.unpack_from(buf, pos)
            if masked_crc(buf[pos:pos + 8]) != length_crc:
                raise CorruptRecordError(f"{name}: corrupted TFRecord: the length at byte {base + pos} fails its checksum "
                                         "(not a TFRecord file, or damaged). Rewrite the shard.")
            start = pos + _HEADER.size
            stop = start + length
            if stop + _CRC.size > end:
                break  # the record continues in the next chunk
            record = buf[start:stop]
            if masked_crc(record) != _CRC.unpack_from(buf, stop)[0]:
                raise CorruptRecordError(f"{name}: corrupted TFRecord: the record of {length} bytes at byte {base + pos} "
                                         "fails its data checksum. Rewrite the shard.")
            out.append(record)
            pos = stop + _CRC.size
        if out:
            yield out
    if pos < len(buf):
        raise CorruptRecordError(f"{name}: truncated TFRecord: the file ends inside the record at byte {base + pos} "
                                 f"({len(buf) - pos} bytes of it). Rewrite the shard.")


def line_chunks(stream: BinaryIO, *, skip: int = 0, chunk_bytes: int = CHUNK_BYTES) -> Iterator[List[bytes]]:
    """The lines of a text file without their ``\\n`` (or ``\\r\\n``), as lists per chunk read, the first ``skip`` left out.

    The lines ``tf.data.TextLineDataset`` gives for the same file.
    """
    rest = b""
    while True:
        data = stream.read(chunk_bytes)
        if not data:
            break
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        if skip:
            dropped = min(skip, len(lines))
            lines, skip = lines[dropped:], skip - dropped
        if lines:
            yield [line[:-1] if line.endswith(b"\r") else line for line in lines]
    if rest and not skip:
        yield [rest[:-1] if rest.endswith(b"\r") else rest]


def count_tfrecords(stream: BinaryIO, name: str) -> int:
    """Records in a TFRecord file (every checksum verified)."""
    return sum(len(chunk) for chunk in tfrecord_chunks(stream, name))


def count_lines(stream: BinaryIO, *, skip: int = 0) -> int:
    """Lines of a text file, the first ``skip`` left out."""
    return sum(len(chunk) for chunk in line_chunks(stream, skip=skip))
