"""The training program's parts, assembled by `mtopt.launch` (the top floor of the house).

  run_dir      what a run keeps to resume: config (checked), progress
  nodes        Ray, the labeller, robot-actor arguments, parameter-following policies,
               the replays and their batch sampler
  collection   fleets of robot actors: a dataset on disk, or episodes into a replay
  budget       on-policy episodes tied to learner steps (`train.episodes_per_step`)
  placement    where the replay, labellers and learner run (`program.placement`), their Ray
               resources, and the driver's watch over restarted nodes
  replay_node  the replay as a Ray actor (`placement=actors`), restarted from its log
  learner_node the learner as a Ray actor, restarted from its checkpoint
  labeller_node the labeller as Ray actors (`labeller.nodes`), every label the program asks
  remote_node  the driver's handle on a node
  build        one run's nodes, built from the config
  training_loop  the driver's loop: learner chunks, evaluations, save points, the report
  offline_data the offline dataset of a run and its import into the replay
  evaluation   greedy evaluation during training and of a saved checkpoint
  reports      the success table and plot

Only this package, `mtopt.launch`, `mtopt.cli` and `mtopt.commands` import the component
packages (actors, replay, success_detectors, learners); see tests/test_import_layers.py.
"""
