"""C-level pieces of the routed media fast path (``mediaserver._fastpath``), one ``.pxd`` per
piece of the pure-Python reference in ``mediaserver.media``: ``rtp`` (parsing and rewriting),
``rtcp`` (the feedback we read and write), ``nack`` (the retransmission cache and what is asked
of publishers), ``keyframes`` (keyframe-request throttling), ``twcc`` (transport-wide congestion
control feedback). They are inline functions and structs compiled into the one extension; the
loop and the tables that use them are in ``_fastpath.pyx``."""
