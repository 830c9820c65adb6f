"""The machinery behind :mod:`archiver.cleanup`, one concept per module.

* :mod:`.retention`: what a cleanup does (:class:`~.retention.Retention`) and its parsing;
* :mod:`.reports`: what a run did (or would do);
* :mod:`.listing`: a partition's files as a run sees them, and finishing interrupted runs;
* :mod:`.rewrite`: reading a partition's inputs and writing a commit group;
* :mod:`.compaction` and :mod:`.expiry`: the two operations, under the lock.

The public API, the locking and the protocol's description are in :mod:`archiver.cleanup`.
"""
