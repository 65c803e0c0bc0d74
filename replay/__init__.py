"""replay: the Reverb replay (see README's Replay section).

base (the `Replay` interface), tables (layout), sharing (none / all / conservative),
reverb_replay (`ReverbReplay`: server, writer, enumeration, checkpoints), balanced_sampler
(rebalanced batches), rlds_io (RLDS import / export), episode_log (the write-ahead log).
"""
