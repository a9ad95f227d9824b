"""THREAD (RFC 5256 section 3): ORDEREDSUBJECT and REFERENCES over `sort.Facts`,
and the text of the THREAD response.

A mailbox's chains of replies can be thousands deep, so nothing here recurses
along a thread: walks use explicit stacks.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pillarbox.endpoint.imap.sort import Facts, base_subject, casemap


class Node:
    """A container of the REFERENCES algorithm; a dummy has no message."""

    __slots__ = ("msg", "parent", "children")

    def __init__(self, msg: Facts | None = None) -> None:
        self.msg = msg
        self.parent: Node | None = None
        self.children: list[Node] = []

    def adopt(self, child: Node) -> None:
        if child.parent is not None:
            child.parent.children.remove(child)
        child.parent = self
        self.children.append(child)

    def has_ancestor(self, other: Node) -> bool:
        """Whether `other` is this node or one above it."""
        if other is not self and not other.children:  # then it is above nobody
            return False
        n: Node | None = self
        while n is not None:
            if n is other:
                return True
            n = n.parent
        return False


def _order(n: Node) -> tuple[float, int]:
    """Sent date, then sequence number; a dummy goes by its first child."""
    while n.msg is None:
        if not n.children:
            return (0.0, 0)
        n = n.children[0]
    return (n.msg.sent, n.msg.seq)


# -- ORDEREDSUBJECT


def ordered_subject(messages: list[Facts]) -> list[Node]:
    """RFC 5256 ORDEREDSUBJECT: one thread per base subject, its first message
    (by sent date) the parent of the others, threads by their first's date."""
    groups: dict[str, list[Facts]] = {}
    for f in messages:
        groups.setdefault(casemap(base_subject(f.subject)[0]), []).append(f)
    roots = []
    for group in groups.values():
        group.sort(key=lambda f: (f.sent, f.seq))
        root = Node(group[0])
        for f in group[1:]:
            root.adopt(Node(f))
        roots.append(root)
    roots.sort(key=_order)
    return roots


# -- REFERENCES

_MSG_ID = re.compile(r"<([^<>]*)>")
_NO_SPACE = str.maketrans("", "", " \t\r\n")


def message_ids(text: str) -> list[str]:
    """The message IDs in a field, without brackets or spaces (folding may split them)."""
    return [i for i in (m.translate(_NO_SPACE) for m in _MSG_ID.findall(text)) if i]


def references(messages: list[Facts]) -> list[Node]:
    """RFC 5256 REFERENCES (its steps 1 to 7)."""
    table: dict[str, Node] = {}
    for f in sorted(messages, key=lambda f: f.seq):
        _link(table, f)
    roots = [n for n in table.values() if n.parent is None]  # step 2
    roots = _prune(roots)  # steps 3 and 4
    for r in roots:  # step 5: a dummy's children first, then the dummy by its first
        if r.msg is None:
            r.children.sort(key=_order)
    roots.sort(key=_order)
    roots = _merge_subjects(roots)  # step 6
    _sort_all(roots)  # step 7
    return roots


def _link(table: dict[str, Node], f: Facts) -> None:
    """Step 1: this message's references linked, then the message under the last."""
    refs = message_ids(f.references) or message_ids(f.in_reply_to)[:1]
    prev: Node | None = None
    for r in refs:  # 1A
        node = table.get(r)
        if node is None:
            node = table[r] = Node()
        if prev is not None and node.parent is None and not prev.has_ancestor(node):
            prev.adopt(node)
        prev = node
    own = message_ids(f.message_id)[:1]
    node = table.get(own[0]) if own else None
    if node is None or node.msg is not None:  # no ID, or a duplicate: a unique one
        key = own[0] if own and node is None else f"\0{f.seq}"
        node = table[key] = Node()
    node.msg = f
    # 1B: the last reference is the parent (the message's own References win over a
    # link guessed from another message's), unless that makes a loop.
    if prev is None:
        if node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
    elif not prev.has_ancestor(node):
        prev.adopt(node)


def _prune(roots: list[Node]) -> list[Node]:
    """Step 4: dummies without children go; a dummy's children take its place, at
    the top only when it has one child."""
    fake = Node()
    for r in roots:
        fake.children.append(r)
        r.parent = fake
    # Post-order without recursion: every node's children are settled before it.
    stack: list[tuple[Node, bool]] = [(fake, False)]
    while stack:
        n, done = stack.pop()
        if not done:
            stack.append((n, True))
            stack.extend((c, False) for c in n.children)
            continue
        kids: list[Node] = []
        for c in n.children:
            if c.msg is not None:
                kids.append(c)
            elif not c.children:
                continue
            elif n is not fake or len(c.children) == 1:
                for g in c.children:
                    g.parent = n
                kids.extend(c.children)
            else:
                kids.append(c)
        n.children = kids
    for r in fake.children:
        r.parent = None
    return fake.children


def _subject_of(n: Node) -> tuple[str, bool]:
    msg = n.msg if n.msg is not None else n.children[0].msg if n.children else None
    if msg is None:
        return "", False
    base, refwd = base_subject(msg.subject)
    return casemap(base), refwd


def _merge_subjects(roots: list[Node]) -> list[Node]:
    """Step 6: threads whose roots share a base subject are put together."""
    table: dict[str, Node] = {}
    for r in roots:  # 6A: a dummy, else one that is no reply, stands for the subject
        subj, refwd = _subject_of(r)
        if not subj:
            continue
        old = table.get(subj)
        if old is None or (old.msg is not None and r.msg is None) or \
                (old.msg is not None and r.msg is not None and _subject_of(old)[1]
                 and not refwd):
            table[subj] = r
    out: list[Node | None] = list(roots)
    where = {id(r): i for i, r in enumerate(roots)}
    for i, r in enumerate(roots):  # 6B
        if r.parent is not None:  # put under another root already
            continue
        subj, refwd = _subject_of(r)
        old = table.get(subj) if subj else None
        if old is None or old is r:
            continue
        if old.msg is None and r.msg is None:
            for c in list(r.children):
                old.adopt(c)
        elif old.msg is None:
            old.adopt(r)
        elif refwd and not _subject_of(old)[1]:
            old.adopt(r)
        elif not refwd and _subject_of(old)[1]:  # seen in the wrong order
            r.adopt(old)
            out[where[id(old)]] = None
            where[id(r)] = i
            table[subj] = r
            continue
        else:  # both replies, or neither: siblings under a new dummy
            dummy = Node()
            j = where[id(old)]
            dummy.adopt(old)
            dummy.adopt(r)
            out[j] = dummy
            where[id(dummy)] = j
            table[subj] = dummy
        out[i] = None
    return [n for n in out if n is not None]


def _sort_all(roots: list[Node]) -> None:
    """Step 7: every set of siblings by sent date, the deepest first (a dummy
    goes by its first child, sorted already)."""
    order: list[Node] = []
    stack = list(roots)
    while stack:
        n = stack.pop()
        order.append(n)
        stack.extend(n.children)
    for n in reversed(order):  # children come after their parent in `order`
        n.children.sort(key=_order)
    roots.sort(key=_order)


# -- the response


def threads(messages: list[Facts], algorithm: str, uid: bool) -> str:
    """The text of a THREAD response after `* THREAD`: UIDs for UID THREAD."""
    roots = references(messages) if algorithm == "REFERENCES" else ordered_subject(messages)
    return render(roots, (lambda f: f.uid) if uid else (lambda f: f.seq))


def render(roots: list[Node], number: Callable[[Facts], int]) -> str:
    """The threads as a THREAD response has them: `(1 2 (3)(4 5))(6)`."""
    out: list[str] = []
    # Items: a node to write as a thread-list, or a string to write as is.
    stack: list[Node | str] = []
    for r in reversed(roots):
        stack.extend([")", r, "("])
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        n: Node = item
        first = True
        while True:  # a chain of only children: numbers in a row
            if n.msg is not None:
                if not first:
                    out.append(" ")
                out.append(str(number(n.msg)))
                first = False
            if len(n.children) != 1:
                break
            n = n.children[0]
        if n.children:
            if not first:
                out.append(" ")
            for c in reversed(n.children):
                stack.extend([")", c, "("])
    return "".join(out)
