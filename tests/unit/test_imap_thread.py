"""THREAD (RFC 5256): ORDEREDSUBJECT, REFERENCES step by step, the response text."""

from __future__ import annotations

from pillarbox.endpoint.imap import sort, thread


def msg(seq: int, subject: str = "", mid: str = "", refs: str = "", irt: str = "",
        hour: int | None = None) -> sort.Facts:
    lines = [f"Subject: {subject}"]
    if mid:
        lines.append(f"Message-ID: {mid}")
    if refs:
        lines.append(f"References: {refs}")
    if irt:
        lines.append(f"In-Reply-To: {irt}")
    h = seq if hour is None else hour
    lines.append(f"Date: Mon, 1 Jan 2024 {h:02d}:00:00 +0000")
    return sort.facts(seq, seq + 100, 0.0, 10, ("\r\n".join(lines) + "\r\n\r\n").encode())


def refs(ms) -> str:
    return thread.render(thread.references(ms), lambda f: f.seq)


def ordered(ms) -> str:
    return thread.render(thread.ordered_subject(ms), lambda f: f.seq)


def test_ordered_subject_groups_by_base_subject_and_date():
    ms = [msg(1, "a"), msg(2, "b", hour=0), msg(3, "Re: a"), msg(4, "Re: b"),
          msg(5, "c"), msg(6, "re: A"), msg(7, "Fwd: c")]
    # Threads by their first message's date: b (0h), a (1h), c (5h); the first is
    # the parent, the others its children: one child in a row, more as siblings.
    assert ordered(ms) == "(2 4)(1 (3)(6))(5 7)"
    assert ordered([]) == ""
    assert thread.render(thread.ordered_subject(ms), lambda f: f.uid).startswith("(102 104)")


def test_ordered_subject_children_by_sent_date():
    ms = [msg(1, "x", hour=5), msg(2, "x", hour=1), msg(3, "x", hour=3)]
    assert ordered(ms) == "(2 (3)(1))"


def test_references_chain_and_branches():
    ms = [msg(1, "a", "<1@x>"),
          msg(2, "Re: a", "<2@x>", "<1@x>"),
          msg(3, "Re: a", "<3@x>", "<1@x> <2@x>"),
          msg(4, "Re: a", "<4@x>", "<1@x>"),
          msg(5, "other", "<5@x>")]
    assert refs(ms) == "(1 (2 3)(4))(5)"
    # The same with UIDs.
    assert thread.render(thread.references(ms), lambda f: f.uid) == "(101 (102 103)(104))(105)"


def test_in_reply_to_when_no_references():
    ms = [msg(1, "a", "<1@x>"), msg(2, "b", "<2@x>", irt="<1@x> <zz@x>")]
    assert refs(ms) == "(1 2)"


def test_missing_parent_gives_a_dummy_root():
    # Step 4B: a dummy at the top with two children stays (shown without a number);
    # with one child the child takes its place.
    ms = [msg(1, "Re: a", "<1@x>", "<0@x>"), msg(2, "Re: a", "<2@x>", "<0@x>"),
          msg(3, "Re: z", "<3@x>", "<gone@x>")]
    assert refs(ms) == "((1)(2))(3)"


def test_dummy_in_the_middle_is_removed():
    # 1 <- (missing m) <- 2: the dummy goes, 2 is 1's child.
    ms = [msg(1, "a", "<1@x>"), msg(2, "a", "<2@x>", "<1@x> <m@x>")]
    assert refs(ms) == "(1 2)"


def test_truncated_references_are_mended_by_the_later_message():
    # Message 2 skips <2@x> in its References, so <3@x> is first put under <1@x>;
    # message 4 (that is <3@x>) names its true parent <2@x>, and step 1B moves it.
    ms = [msg(1, "a", "<1@x>"), msg(2, "a", "<9@x>", "<1@x> <3@x>"),
          msg(3, "a", "<2@x>", "<1@x>"), msg(4, "a", "<3@x>", "<1@x> <2@x>")]
    assert refs(ms) == "(1 3 4 2)"


def test_loops_and_duplicate_ids_do_not_hang():
    ms = [msg(1, "a", "<1@x>", "<2@x>"), msg(2, "b", "<2@x>", "<1@x>"),
          msg(3, "c", "<3@x>", "<3@x>"),  # references itself
          msg(4, "d", "<1@x>")]  # a duplicate ID: a thread of its own
    out = refs(ms)
    assert sorted(out.replace("(", " ").replace(")", " ").split()) == ["1", "2", "3", "4"]
    assert "(3)" in out and "(4)" in out


def test_messages_without_ids_are_single_threads():
    ms = [msg(1, "a"), msg(2, "b"), msg(3, "c", refs="garbage")]
    assert refs(ms) == "(1)(2)(3)"


def test_subject_merge_step_6():
    # Roots with the same base subject: a reply goes under the non-reply (6B third
    # case); two non-replies become siblings under a new dummy (last case).
    ms = [msg(1, "topic", "<1@x>"), msg(2, "Re: topic", "<2@x>", "<gone@x>"),
          msg(3, "news", "<3@x>"), msg(4, "news", "<4@x>")]
    assert refs(ms) == "(1 2)((3)(4))"


def test_subject_merge_into_a_dummy():
    # A dummy thread (two replies to a missing message) takes in a lone message
    # of the same subject, sorted by date among the dummy's children.
    ms = [msg(1, "Re: q", "<1@x>", "<0@x>", hour=2), msg(2, "Re: q", "<2@x>", "<0@x>", hour=4),
          msg(3, "q", "<3@x>", hour=3)]
    assert refs(ms) == "((1)(3)(2))"


def test_subjects_empty_are_not_merged():
    ms = [msg(1, "", "<1@x>"), msg(2, "Re:", "<2@x>")]
    assert refs(ms) == "(1)(2)"


def test_siblings_sorted_by_date_at_every_level():
    ms = [msg(1, "a", "<1@x>", hour=1), msg(2, "a", "<2@x>", "<1@x>", hour=9),
          msg(3, "a", "<3@x>", "<1@x>", hour=5), msg(4, "a", "<4@x>", "<1@x> <2@x>", hour=8),
          msg(5, "a", "<5@x>", "<1@x> <2@x>", hour=6), msg(6, "z", "<6@x>", hour=0)]
    assert refs(ms) == "(6)(1 (3)(2 (5)(4)))"


def test_rfc_5256_response_shape():
    # RFC 5256 section 4: "(3 6 (4 23)(44 7 96))": 3 -> 6 -> {4 -> 23, 44 -> 7 -> 96}.
    ms = [msg(3, "s", "<3@x>"), msg(6, "s", "<6@x>", "<3@x>"),
          msg(4, "s", "<4@x>", "<3@x> <6@x>"), msg(23, "s", "<23@x>", "<6@x> <4@x>", hour=23),
          msg(44, "s", "<44@x>", "<6@x>", hour=12), msg(7, "s", "<7@x>", "<44@x>", hour=13),
          msg(96, "s", "<96@x>", "<44@x> <7@x>", hour=14), msg(2, "t", "<2@x>")]
    assert refs(ms) == "(2)(3 6 (4 23)(44 7 96))"


def test_deep_chain_needs_no_recursion():
    n = 20000
    ms = [msg(1, "a", "<1@x>")] + [
        msg(i, "a", f"<{i}@x>", f"<{i - 1}@x>", hour=1) for i in range(2, n + 1)]
    out = refs(ms)
    assert out == "(" + " ".join(str(i) for i in range(1, n + 1)) + ")"
    # A deep tree of branches (each node with two children) renders too.
    ms = [msg(1, "a", "<1@x>", hour=0)]
    for i in range(2, 4000, 2):
        ms.append(msg(i, "a", f"<{i}@x>", f"<{max(1, i - 2)}@x>", hour=0))
        ms.append(msg(i + 1, "a", f"<{i + 1}@x>", f"<{max(1, i - 2)}@x>", hour=0))
    assert refs(ms).count("(") == refs(ms).count(")")
