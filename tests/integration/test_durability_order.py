"""The 250 for a message is never sent before the fdatasync that covers it.

The real server runs under strace; clients send a burst of messages at once so
group commit puts several of them in one write and one fdatasync. From the
trace, for every message acknowledged with "250 2.0.0 OK queued as <ID>":

  1. a writev to a queue/segments/<n>.seg file carried its record (the record's
     JSON header holds "id":"<ID>");
  2. an fdatasync on that same fd started after that writev returned;
  3. that fdatasync returned before the socket write carrying the 250 started.

strace writes one line per event in the order it sees them, with -ttt
timestamps. A call that another thread interrupts is split in two lines:
"name(args <unfinished ...>" when it starts and "<... name resumed>rest) = ret"
when it returns, so for split calls the resumed line's timestamp is the return
time. A call printed on one line returned before strace saw the next event, so
its return is placed at its own line. Events are compared by (timestamp, line
number): line order breaks ties between equal microsecond timestamps.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections import Counter
from dataclasses import dataclass

from .support import ALICE, BOB, make_message

THREADS = 20
PER_THREAD = 5
SENDER = "burst@remote.test"
# -y names each fd's file or socket. -s 256 keeps a record's JSON header whole; it
# also caps the iovecs shown per writev, and a batch here is at most 20 records of
# about 4 buffers each.
STRACE = ["strace", "-f", "-q", "-ttt", "-y", "-s", "256",
          "-e", "trace=writev,write,fdatasync,fsync,sendto,sendmsg"]

# A position in the trace: (timestamp, line number).
Pos = tuple[float, int]


@dataclass
class Call:
    """One system call from the trace."""

    pid: int
    name: str
    args: str  # everything between the parentheses, as strace printed it
    ret: str  # the return value as printed: "42", "0", "-1 EAGAIN (...)", "?"
    start: Pos  # when it was entered
    end: Pos  # when it returned

    @property
    def fd(self) -> int | None:
        m = _FD_RE.match(self.args)
        return int(m.group(1)) if m else None

    @property
    def path(self) -> str:
        """What -y printed for the first argument: a file path or "socket:[inode]"."""
        m = _FD_RE.match(self.args)
        return (m.group(2) or "") if m else ""

    @property
    def ok(self) -> bool:
        return self.ret.split()[0].isdigit() if self.ret else False


# "1234 " (-o FILE) or "[pid 1234] " (stderr) before the -ttt timestamp.
_LEAD_RE = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(\d+\.\d+)\s+(.*)$")
_START_RE = re.compile(r"^(\w+)\((.*)$")  # "name(args..."
_RESUMED_RE = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")  # "<... name resumed>rest"
_UNFINISHED = " <unfinished ...>"
_FD_RE = re.compile(r"^(\d+)(?:<([^>]*)>)?")  # "7</x/queue/segments/1.seg>, ..."


def _split_return(tail: str) -> tuple[str, str]:
    """'args) = ret' -> ('args', 'ret'). The last ') = ' is strace's: strings are quoted."""
    args, sep, ret = tail.rpartition(") = ")
    return (args, ret.strip()) if sep else (tail, "")


def parse_strace(text: str) -> list[Call]:
    """The system calls of a `strace -f -ttt [-y]` trace, in the order they started.

    Handles calls split across threads: the "<unfinished ...>" line gives the
    start, the matching "<... name resumed>" line of the same pid gives the
    return time and the rest of the arguments. Signal and exit lines
    ("--- SIG...", "+++ exited ...") are skipped.
    """
    calls: list[Call] = []
    open_calls: dict[int, tuple[str, str, Pos]] = {}  # pid -> unfinished (name, args, start)
    for lineno, line in enumerate(text.splitlines()):
        m = _LEAD_RE.match(line)
        if not m:
            continue
        pid, pos, rest = int(m.group(1)), (float(m.group(2)), lineno), m.group(3)
        if rest.endswith(_UNFINISHED):  # started; returns on a "resumed" line later
            s = _START_RE.match(rest[: -len(_UNFINISHED)])
            if s:
                open_calls[pid] = (s.group(1), s.group(2), pos)
            continue
        r = _RESUMED_RE.match(rest)
        if r:  # returned: join it with its start
            started = open_calls.pop(pid, None)
            if started is None or started[0] != r.group(1):
                continue  # began before tracing did, or a line we could not read
            name, head, start = started
            args, ret = _split_return(head + r.group(2))
            calls.append(Call(pid, name, args, ret, start, pos))
            continue
        s = _START_RE.match(rest)
        if s:  # whole call on one line: it returned before the next line's event
            args, ret = _split_return(s.group(2))
            calls.append(Call(pid, s.group(1), args, ret, pos, pos))
    calls.sort(key=lambda c: c.start)
    return calls


# In the trace strings are C-escaped: the record header {"id":"X",...} reads {\"id\":\"X\",...}
_RECORD_ID_RE = re.compile(r'\\"id\\":\\"([0-9a-f]+)\\"')
_QUEUED_RE = re.compile(r"250 2\.0\.0 OK queued as ([0-9a-f]+)\\r\\n")
_SEGMENT_RE = re.compile(r"/queue/segments/\d+\.seg$")


def _at(pos: Pos) -> str:
    return f"{pos[0]:.6f} (line {pos[1] + 1})"


def order_problems(calls: list[Call], ids: list[str]) -> tuple[list[str], dict[str, Call]]:
    """Check every id's append -> fdatasync -> 250 order; (problems, id -> covering sync).

    Files and sockets are told apart by the names strace -y prints for fds.
    """
    appends: dict[str, Call] = {}  # id -> the writev that carried its record
    replies: dict[str, Call] = {}  # id -> the socket write carrying its 250
    for c in calls:
        if c.name == "writev" and c.ok and _SEGMENT_RE.search(c.path):
            for msg_id in _RECORD_ID_RE.findall(c.args):
                appends.setdefault(msg_id, c)
        elif c.name in ("write", "writev", "sendto", "sendmsg") and c.path.startswith("socket:"):
            for msg_id in _QUEUED_RE.findall(c.args):
                replies.setdefault(msg_id, c)
    syncs = [c for c in calls if c.name in ("fdatasync", "fsync") and c.ret == "0"]

    problems: list[str] = []
    covering: dict[str, Call] = {}
    for msg_id in ids:
        w, r = appends.get(msg_id), replies.get(msg_id)
        if w is None or r is None:
            problems.append(f"{msg_id}: in the trace: append {w is not None},"
                            f" 250 write {r is not None}")
            continue
        # The first fdatasync on the segment's fd that began after the append returned.
        sync = next((s for s in syncs if s.fd == w.fd and s.path == w.path
                     and s.start > w.end), None)
        where = (f"  append     {_at(w.start)} .. {_at(w.end)} on {w.fd}<{w.path}>\n"
                 f"  250 write  {_at(r.start)} on {r.fd}<{r.path}>")
        if sync is None:
            problems.append(f"{msg_id}: no fdatasync on its segment after the append\n{where}")
        elif not sync.end < r.start:
            problems.append(f"{msg_id}: 250 sent before its fdatasync returned\n{where}\n"
                            f"  fdatasync  {_at(sync.start)} .. {_at(sync.end)}")
        else:
            covering[msg_id] = sync
    return problems, covering


def _send_burst(server) -> list[str]:
    """THREADS sessions sending PER_THREAD messages each, all at once; the queue ids."""
    ids: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    go = threading.Barrier(THREADS)

    def session(n: int) -> None:
        try:
            with server.smtp(timeout=60) as s:
                go.wait(60)
                for i in range(PER_THREAD):
                    rcpt = (ALICE, BOB)[(n + i) % 2]
                    msg = make_message(SENDER, rcpt, f"burst {n}-{i}",
                                       body=f"burst {n}-{i}\r\n" + ("x" * 70 + "\r\n") * 50)
                    assert s.mail(SENDER)[0] == 250
                    assert s.rcpt(rcpt)[0] == 250
                    code, text = s.data(msg)
                    m = re.match(rb"2\.0\.0 OK queued as ([0-9a-f]+)$", text)
                    assert code == 250 and m, f"DATA: {code} {text!r}"
                    with lock:
                        ids.append(m.group(1).decode())
        except Exception as e:  # reported below, in the test's thread
            with lock:
                errors.append(f"session {n}: {e!r}")
            go.abort()

    threads = [threading.Thread(target=session, args=(n,), daemon=True) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, "\n".join(errors[:10])
    assert len(ids) == THREADS * PER_THREAD
    return ids


def test_250_is_sent_only_after_the_fdatasync_covering_the_message(make_server, tmp_path):
    assert shutil.which("strace"), "strace is missing: run scripts/ensure-system-packages"
    trace_file = tmp_path / "strace.out"
    server = make_server(wrapper=[*STRACE, "-o", str(trace_file)])
    ids = _send_burst(server)
    server.stop()  # strace exits with the server: the trace is complete
    assert not server.running()

    calls = parse_strace(trace_file.read_text(errors="replace"))
    problems, covering = order_problems(calls, ids)
    assert not problems, f"{len(problems)} of {len(ids)} messages:\n" + "\n".join(problems[:10])

    # The burst did exercise group commit: some fdatasync covered several messages.
    per_sync = Counter(id(sync) for sync in covering.values())
    assert max(per_sync.values()) > 1, (
        f"every message had an fdatasync of its own ({len(per_sync)} of them):"
        " the burst did not exercise group commit"
    )


# A hand-made trace in both of strace's -f formats: the same message acknowledged
# while its fdatasync is still running in another thread, then after it returned.
_SEG = "7</q/queue/segments/000000000001.seg>"
_SYNTHETIC = f"""\
101 1000.000100 writev({_SEG}, [{{iov_base="PBQ1", iov_len=4}}, \
{{iov_base="{{\\"id\\":\\"aa01\\",\\"mail_from\\":\\"\\"}}", iov_len=26}}], 2) = 30
101 1000.000200 fdatasync({_SEG} <unfinished ...>
[pid   100] 1000.000300 write(9<socket:[5]>, "250 2.0.0 OK queued as aa01\\r\\n", 29) = 29
[pid   101] 1000.000400 <... fdatasync resumed>) = 0
100 1000.000500 write(10<socket:[6]>, "250 2.0.0 OK queued as aa01\\r\\n", 29) = 29
"""


def test_the_trace_check_tells_early_from_late_250():
    lines = _SYNTHETIC.splitlines(keepends=True)
    calls = parse_strace(_SYNTHETIC)
    assert [(c.name, c.start[0], c.end[0]) for c in calls] == [
        ("writev", 1000.0001, 1000.0001), ("fdatasync", 1000.0002, 1000.0004),
        ("write", 1000.0003, 1000.0003), ("write", 1000.0005, 1000.0005)]
    early, _ = order_problems(calls, ["aa01"])  # the reply on line 3: before the sync returned
    assert len(early) == 1 and "250 sent before its fdatasync returned" in early[0]
    late_only = "".join(lines[:2] + lines[3:])  # without the early reply
    problems, covering = order_problems(parse_strace(late_only), ["aa01"])
    assert not problems and covering["aa01"].name == "fdatasync"
    no_sync = "".join(lines[:1] + lines[4:])  # an append and a 250, no fdatasync
    problems, _ = order_problems(parse_strace(no_sync), ["aa01"])
    assert len(problems) == 1 and "no fdatasync" in problems[0]
