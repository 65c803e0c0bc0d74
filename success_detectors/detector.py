"""`SuccessDetector`: the trained multi-task classifier with its examples, quality and files.

Lifecycle: `SuccessDetector.create(spec, max_tasks)` -> `train(examples, names)` (all slots
given, all parameters) -> `add_task(...)` (one new slot) / `retrain(...)` (new labelled
data) -> `save(dir)` / `load(dir)`. Calling a detector on episodes labels them (the project's
labeller interface: float32 [N, max_tasks], one forward pass on the final observations).

Adding a task trains only the new slot's head on the frozen torso (whose features for the
examples are computed once, so adding is fast even for images): the other slots' outputs
stay bit-for-bit the same, so their quality cannot drop (the price: the new task must be
separable from the torso's features plus the raw state, which the heads also see).
Retraining fine-tunes everything on the new data together with every stored example
(rehearsal), so old tasks are not forgotten. Every example ever given is kept in the
detector's directory, split once into training and held-out parts when it arrives.

Each slot has a logit offset (its calibration, see DetectorConfig.calibrate), so that every
consumer can threshold every slot's probability at the one configured threshold.

Files in the detector directory (written to a fresh directory, then swapped in):
  detector.json      spec, max_tasks, config, version, per-slot names, counts, quality and
                     logit offsets
  variables.msgpack  the Flax variables (params and state-normalisation statistics)
  examples.npz       all examples (`ExampleSet`) plus their held-out flags
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from typing import Mapping, Sequence

import flax.serialization
import jax
import numpy as np

from mtopt.specs import EnvSpec
from success_detectors import training
from success_detectors.examples import ExampleSet, ExamplesError, final_observations, \
    holdout_mask
from success_detectors.metrics import binary_metrics
from success_detectors.networks import dummy_observation, make_classifier

FORMAT_VERSION = 1
META_FILE = "detector.json"
VARIABLES_FILE = "variables.msgpack"
EXAMPLES_FILE = "examples.npz"


class DetectorError(ValueError):
  """A detector directory is missing or malformed, or a request does not fit the detector."""


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
  """Attributes:
    torso: hidden sizes of the shared MLP.
    head_hidden: hidden units of each slot's head (of each of its fold heads).
    head_folds: K >= 2: after the torso is trained, each trained slot's head is refitted as
      K cross-fitted heads on the frozen torso (head k never sees fold k of the training
      examples), packed as one head whose logit is their mean; the slot's cut is calibrated
      on every training example's out-of-fold logit, and the held-out examples stay unused
      until quality is measured. 1: one head trained with the torso, calibrated on the
      held-out examples (detectors saved before folds existed).
    conv_channels: image encoder channels (image observations only).
    state_pairs: add log |x_i - x_j| of every pair of state entries as inputs (see
      networks.SuccessClassifier).
    state_distances: window lengths d: add the log distance between every two runs of d
      consecutive state entries as inputs (2: distances in the plane, 3: in space).
    state_squares: add the square of each normalised state entry as inputs (spheres
      around a point become linear thresholds).
    feature_squash: bound normalised state features smoothly to +-this (0: off), so that
      states unlike any example (a tumbled cube's orientation) cannot swing the output.
    threshold: probability at or above which an episode counts as a success.
    train_steps: Adam steps when training all slots (fresh detector or retrain).
    add_task_steps: Adam steps when fitting slot heads on the frozen torso: a new task's
      head, and every head after full training when head_folds > 1.
    batch_size: examples per step.
    learning_rate: peak Adam learning rate (cosine-decayed) when training the whole network.
    holdout_fraction: share of each task's successes and failures held out for quality.
    other_task_negatives: use other tasks' successes as failures for a task.
    input_sparsity: weight of a group-lasso penalty on the weights that read each input
      feature (training.input_group_norm): prefers predicates on few features. Used when
      training the whole network, and for the heads when head_folds == 1.
    head_sparsity: the group-lasso weights tried for each slot's fold heads (head_folds > 1);
      each slot keeps the fit whose out-of-fold logits have the lowest loss
      (training.fit_fold_heads_selected).
    head_relax: > 0: each of those fits is also refitted on only the inputs it kept, with
      its weight times this (the relaxed group lasso), and competes on the same loss; 0: off.
    head_learning_rate: peak Adam rate of the slot heads fitted on the frozen torso. Higher
      than the torso's: a predicate's threshold is sharp (millimetres on tabletop), and
      Adam moves a weight by about the rate per step, so at 1e-3 the heads stayed soft.
    calibrate: after training a slot, shift its logit so that `threshold` is the cut that
      balances precision and recall best: on its out-of-fold logits (head_folds > 1), else
      on its held-out examples (whose quality figures are then slightly optimistic).
    seed: initialisation, split and batch-order seed.
  """

  torso: tuple[int, ...] = (256, 256)
  head_hidden: int = 64
  head_folds: int = 5
  conv_channels: tuple[int, ...] = (16, 32, 32, 64)
  state_pairs: bool = True
  state_distances: tuple[int, ...] = (2, 3)
  state_squares: bool = True
  feature_squash: float = 4.0
  threshold: float = 0.5
  train_steps: int = 2000
  add_task_steps: int = 1500
  batch_size: int = 256
  learning_rate: float = 1e-3
  holdout_fraction: float = 0.2
  other_task_negatives: bool = True
  input_sparsity: float = 1e-3
  head_sparsity: tuple[float, ...] = (3e-3, 1e-2)
  head_relax: float = 0.3
  head_learning_rate: float = 3e-2
  calibrate: bool = True
  seed: int = 0

  @classmethod
  def from_dict(cls, d: Mapping) -> "DetectorConfig":
    """From a dict or a config section; unknown keys are an error naming them."""
    d = dict(d)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise DetectorError(f"unknown detector config key(s) {unknown}; known: {sorted(names)}")
    for k in ("torso", "conv_channels", "state_distances"):
      if k in d:
        d[k] = tuple(int(x) for x in d[k])
    return cls(**d)

  def __post_init__(self):
    weights = tuple(float(x) for x in self.head_sparsity)
    if not weights or min(weights) < 0:
      raise DetectorError(f"head_sparsity must list weights >= 0, got {self.head_sparsity!r}")
    object.__setattr__(self, "head_sparsity", weights)
    if not self.head_relax >= 0:
      raise DetectorError(f"head_relax must be >= 0, got {self.head_relax!r}")
    for name in ("learning_rate", "head_learning_rate"):
      if not getattr(self, name) > 0:
        raise DetectorError(f"{name} must be > 0, got {getattr(self, name)!r}")


@dataclasses.dataclass
class SlotInfo:
  name: str
  successes: int = 0
  failures: int = 0
  metrics: dict = dataclasses.field(default_factory=dict)
  offset: float = 0.0  # Added to the slot's logit: its cut's calibration (DetectorConfig).
  head_sparsity: float | None = None  # The fold heads' group-lasso weight, where chosen...
  head_relaxed: bool | None = None  # ...and whether they were refitted on what it kept.


# The fields that define the network (its parameter shapes or its function), named as
# `make_classifier`'s arguments: fixed once the detector is built. How to train and judge
# (steps, rates, threshold, ...) may change.
NETWORK_FIELDS = ("torso", "head_hidden", "head_folds", "conv_channels", "state_pairs",
                  "state_distances", "state_squares", "feature_squash")


class SuccessDetector:
  """A multi-task success classifier: final observation -> p(success) for every slot."""

  def __init__(self, spec: EnvSpec, max_tasks: int, config: DetectorConfig | None = None,
               variables: dict | None = None):
    self.spec, self.max_tasks = spec, max_tasks
    self._config = config or DetectorConfig()
    self.model = make_classifier(spec, max_tasks,
                                 **{k: getattr(self.config, k) for k in NETWORK_FIELDS})
    if variables is None:
      variables = self.model.init(jax.random.PRNGKey(self.config.seed),
                                  dummy_observation(spec))
      variables = jax.tree_util.tree_map(np.asarray, flax.core.unfreeze(variables))
    self.variables = variables
    self.version = 0
    self.slots: dict[int, SlotInfo] = {}
    self.examples: ExampleSet | None = None
    self.heldout: np.ndarray = np.zeros(0, bool)
    self._compact_cache = None  # See _compact.

  @property
  def config(self) -> DetectorConfig:
    return self._config

  @config.setter
  def config(self, config: DetectorConfig) -> None:
    """A new training / judging configuration; its NETWORK_FIELDS are ignored (the built
    network stays, so that the config saved with it always describes it)."""
    self._config = dataclasses.replace(
        config, **{k: getattr(self._config, k) for k in NETWORK_FIELDS})

  @classmethod
  def create(cls, spec: EnvSpec, max_tasks: int, config: DetectorConfig | None = None
             ) -> "SuccessDetector":
    return cls(spec, max_tasks, config)

  # Labelling.
  def predict(self, observations: Mapping[str, np.ndarray]) -> np.ndarray:
    """float32 [N, max_tasks] success probabilities for observations name -> [N, ...]; 0 in
    slots without a task (no head was trained for them)."""
    obs = {}
    for k, s in self.spec.observation.items():
      if k not in observations:
        raise DetectorError(f"observations lack {k!r} (have {sorted(observations)})")
      v = np.asarray(observations[k])
      if v.shape[1:] != s.shape:
        raise DetectorError(f"observations[{k!r}]: expected [N, {s.shape}], got {v.shape}")
      obs[k] = v.astype(s.dtype, copy=False)
    n = len(next(iter(obs.values())))
    probs = np.zeros((n, self.max_tasks), np.float32)
    slots = sorted(self.slots)
    if not slots or n == 0:
      return probs
    with_torso, heads = self._compact(tuple(slots))
    logits = training.predict(self.model, self.variables, obs, fn=lambda m, v, o: (
        training.compact_logits(m, v, o, heads, with_torso)))
    offsets = np.array([self.slots[s].offset for s in slots], np.float32)
    # The sigmoid, as a tanh: no overflow warnings for very negative logits.
    probs[:, slots] = 0.5 + 0.5 * np.tanh(0.5 * (logits + offsets))
    return probs

  def _compact(self, slots: tuple[int, ...]):
    """`slots`' heads as `training.compact_heads`, rebuilt when the heads or slots change
    (training replaces the heads' dict, so its identity says whether they did)."""
    heads = self.variables["params"]["heads"]
    if (self._compact_cache is None or self._compact_cache[0] is not heads
        or self._compact_cache[1] != slots):
      self._compact_cache = (heads, slots, training.compact_heads(self.model, heads, slots))
    return self._compact_cache[2]

  def __call__(self, episodes: Sequence) -> np.ndarray:
    """The labeller: float32 [N, max_tasks] from the episodes' final observations."""
    if len(episodes) == 0:
      return np.zeros((0, self.max_tasks), np.float32)
    return self.predict(final_observations(episodes, self.spec.observation))

  @property
  def task_names(self) -> dict[int, str]:
    return {s: i.name for s, i in sorted(self.slots.items())}

  # Training.
  @contextlib.contextmanager
  def _transaction(self):
    """Restores the detector as it was if training fails half-way."""
    saved = (self.variables, self.version,
             {s: dataclasses.replace(i) for s, i in self.slots.items()}, self.examples,
             self.heldout)
    try:
      yield
    except BaseException:
      self.variables, self.version, self.slots, self.examples, self.heldout = saved
      raise

  def _add_examples(self, examples: ExampleSet) -> None:
    """Stores new examples, splitting them into training and held-out parts."""
    seed = self.config.seed + len(self.heldout)
    held = holdout_mask(examples, self.config.holdout_fraction, seed)
    self.examples = examples if self.examples is None else ExampleSet.concat(
        [self.examples, examples])
    self.heldout = np.concatenate([self.heldout, held])

  def _check_examples(self, examples: ExampleSet) -> None:
    for k, s in self.spec.observation.items():
      v = examples.observations.get(k)
      if v is None or v.shape[1:] != s.shape:
        raise ExamplesError(f"examples: observation {k!r} must be [N, {s.shape}], got "
                            f"{None if v is None else v.shape}")
    bad = sorted(set(int(x) for x in np.unique(examples.slot))
                 - set(range(self.max_tasks)))
    if bad:
      raise ExamplesError(f"examples: slot(s) {bad} outside [0, {self.max_tasks})")

  def _fit(self, train_slots, steps: int) -> tuple[list[float], dict]:
    """Trains the network on the stored training examples of `train_slots`; returns the
    loss history and the heads it trained with.

    Only `train_slots`' heads take part (a network with one head per trained slot, scattered
    back afterwards): the other slots have no examples, hence no gradient, and computing
    their heads cost more than the torso (tabletop: 6 of 16 slots). With fold heads
    (head_folds > 1) it trains the torso with one plain head per slot, started from each
    slot's first fold head, and keeps the detector's heads as they were (`_fit_all` refits
    them on the new torso): training K times wider heads with the torso would cost K times
    more in the heads, for heads that are replaced anyway.
    """
    c = self.config
    slots = sorted(int(s) for s in train_slots)
    train = self.examples.take(~self.heldout)
    labels, weights = training.targets(train, self.max_tasks, slots, c.other_task_negatives)
    heads, h = self.variables["params"]["heads"], c.head_hidden
    full = {"w1": heads["w1"][..., :h], "b1": heads["b1"][:, :h],
            "w2": heads["w2"][:, :h] * c.head_folds, "b2": heads["b2"]}
    model = make_classifier(self.spec, len(slots),
                            **{**{k: getattr(c, k) for k in NETWORK_FIELDS}, "head_folds": 1})
    variables = {**self.variables, "params": {**self.variables["params"],
                                              "heads": {k: v[slots] for k, v in full.items()}}}
    variables, history = training.fit(
        model, variables, train, labels[:, slots], weights[:, slots], steps, c.batch_size,
        c.learning_rate, c.seed + self.version, c.input_sparsity)
    variables = jax.tree_util.tree_map(np.asarray, variables)
    trained_heads = {k: np.array(v) for k, v in full.items()}
    for k, v in variables["params"]["heads"].items():
      trained_heads[k][slots] = v
    variables["params"]["heads"] = (self.variables["params"]["heads"] if c.head_folds > 1
                                    else trained_heads)
    self.variables = variables
    self.version += 1
    return history, trained_heads

  def _fit_heads(self, slots: Sequence[int], steps: int, columns=None) -> None:
    """Refits `slots`' heads on head inputs computed once by the frozen torso (fold heads,
    see DetectorConfig.head_folds), reading only `columns` of them if given, then
    calibrates them; other slots stay bit-identical."""
    c = self.config
    slots = sorted(slots)
    train = self.examples.take(~self.heldout)
    labels, weights = training.targets(train, self.max_tasks, slots, c.other_task_negatives)
    labels, weights = labels[:, slots], weights[:, slots]
    use = weights.sum(1) > 0
    train, labels, weights = train.take(use), labels[use], weights[use]
    features = training.predict(self.model, self.variables, train.observations,
                                fn=training.head_inputs)
    folds = training.fold_assignment(train, c.head_folds, c.seed + self.version)
    fit_args = (features, labels, weights, folds, c.head_folds, c.head_hidden, steps,
                c.batch_size, c.head_learning_rate, c.seed + self.version)
    if c.head_folds > 1:
      packed, oof, chosen = training.fit_fold_heads_selected(*fit_args, c.head_sparsity,
                                                             columns, c.head_relax)
      for j, s in enumerate(slots):
        self.slots[s].head_sparsity = float(chosen["sparsity"][j])
        self.slots[s].head_relaxed = bool(chosen["relaxed"][j])
    else:
      packed, oof = training.fit_fold_heads(*fit_args, c.input_sparsity, columns)
    heads = {k: np.array(v) for k, v in self.variables["params"]["heads"].items()}
    for k, v in packed.items():
      heads[k][slots] = v
    self.variables = {**self.variables, "params": {**self.variables["params"], "heads": heads}}
    self.version += 1
    if oof is None:
      self._calibrate(slots)
      return
    for j, s in enumerate(slots):
      sel = weights[:, j] > 0
      self.slots[s].offset = (training.calibration_offset(oof[sel, j], labels[sel, j] > 0.5,
                                                          c.threshold) if c.calibrate else 0.0)

  def _fit_all(self, steps: int) -> list[float]:
    """Trains the whole network for every slot, then (with fold heads) refits the heads."""
    slots = sorted(self.slots)
    history, trained_heads = self._fit(slots, steps)
    if self.config.head_folds > 1:
      # The network trained with plain heads shows which inputs matter; a new task's head
      # (add_task) reads them all instead, as it may need inputs no other task used.
      columns = training.used_head_inputs({**self.variables["params"], "heads": trained_heads},
                                          slots)
      self._fit_heads(slots, self.config.add_task_steps, columns)
    else:
      self._calibrate(slots)
    return history

  def train(self, examples: ExampleSet, names: Mapping[int, str],
            steps: int | None = None) -> dict:
    """Trains a fresh detector on examples for the slots in `names`; returns quality."""
    if self.slots:
      raise DetectorError("train() is for a fresh detector; use add_task() or retrain()")
    self._check_examples(examples)
    missing = sorted(set(int(s) for s in np.unique(examples.slot)) - set(names))
    if missing:
      raise DetectorError(f"examples for slot(s) {missing} but no task name given")
    with self._transaction():
      self._add_examples(examples)
      norm = training.state_statistics(self.examples, self.variables["norm"])
      self.variables = {**self.variables, "norm": norm}
      self.slots = {int(s): SlotInfo(n) for s, n in names.items()}
      history = self._fit_all(steps or self.config.train_steps)
      self._refresh_quality()
    return {"history": history, "quality": self.quality()}

  def add_task(self, slot: int, name: str, examples: ExampleSet,
               steps: int | None = None) -> dict:
    """Trains slot `slot`'s head alone on `examples` (given for `slot`); others unchanged.

    Other tasks' stored successes are the new task's extra failures (if configured).
    Returns the quality of every slot after the change.
    """
    if slot in self.slots:
      raise DetectorError(f"slot {slot} is already used by task {self.slots[slot].name!r}")
    if not 0 <= slot < self.max_tasks:
      raise DetectorError(f"slot {slot} outside [0, {self.max_tasks})")
    examples = ExampleSet(examples.observations, np.full(len(examples), slot), examples.success)
    self._check_examples(examples)
    if not self.slots:  # The first task of a detector: nothing to keep, train everything.
      return self.train(examples, {slot: name}, steps)
    with self._transaction():
      self._add_examples(examples)
      self.slots[slot] = SlotInfo(name)
      self._fit_heads([slot], steps or self.config.add_task_steps)
      self._refresh_quality()
    return {"quality": self.quality()}

  def retrain(self, examples: ExampleSet | None = None, steps: int | None = None) -> dict:
    """Fine-tunes the network on new examples plus every stored one (rehearsal against
    forgetting), then refits every slot's fold heads (head_folds > 1)."""
    if not self.slots:
      raise DetectorError("retrain() needs a trained detector")
    if examples is not None and len(examples):
      self._check_examples(examples)
      unknown = sorted(set(int(s) for s in np.unique(examples.slot)) - set(self.slots))
      if unknown:
        raise DetectorError(f"examples for slot(s) {unknown} that have no task; add_task first")
    with self._transaction():
      if examples is not None and len(examples):
        self._add_examples(examples)
      history = self._fit_all(steps or self.config.train_steps)
      self._refresh_quality()
    return {"history": history, "quality": self.quality()}

  # Quality.
  def evaluate(self, examples: ExampleSet, slots: Sequence[int] | None = None) -> dict[int, dict]:
    """Per-slot precision / recall / calibration on `examples` (own labels, plus other
    slots' successes as failures when `other_task_negatives`)."""
    slots = sorted(self.slots) if slots is None else list(slots)
    if not len(examples):
      return {}
    probs = self.predict(examples.observations)
    out = {}
    for s in slots:
      own = examples.slot == s
      sel = own | (examples.success & ~own) if self.config.other_task_negatives else own
      if not sel.any():
        continue
      out[s] = binary_metrics(probs[sel, s], examples.success[sel] & own[sel],
                              self.config.threshold)
    return out

  def _calibrate(self, slots: Sequence[int]) -> None:
    """Sets each slot's logit offset so that the configured threshold is the cut that
    balances precision and recall best on the held-out examples (0 if not configured)."""
    held = self.examples.take(self.heldout)
    logits = (training.predict(self.model, self.variables, held.observations)
              if len(held) else None)
    for s in slots:
      self.slots[s].offset = 0.0
      if not self.config.calibrate or logits is None:
        continue
      own = held.slot == s
      sel = own | (held.success & ~own) if self.config.other_task_negatives else own
      if sel.any():
        self.slots[s].offset = training.calibration_offset(
            logits[sel, s], held.success[sel] & own[sel], self.config.threshold)

  def _refresh_quality(self) -> None:
    counts = self.examples.counts()
    held = self.evaluate(self.examples.take(self.heldout))
    for s, info in self.slots.items():
      info.successes, info.failures = counts.get(s, (0, 0))
      info.metrics = held.get(s, {})

  def quality(self) -> dict[int, dict]:
    """slot -> {name, successes, failures, held-out metrics}."""
    return {s: {"name": i.name, "successes": i.successes, "failures": i.failures, **i.metrics}
            for s, i in sorted(self.slots.items())}

  # Persistence.
  def save(self, directory: str) -> str:
    """Writes the detector to `directory` (replacing an older one there, atomically)."""
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp, old = directory + ".new", directory + ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    meta = {
        "format": FORMAT_VERSION, "version": self.version, "max_tasks": self.max_tasks,
        "spec": self.spec.to_json(), "config": dataclasses.asdict(self.config),
        "slots": {str(s): dataclasses.asdict(i) for s, i in sorted(self.slots.items())},
    }
    with open(os.path.join(tmp, META_FILE), "w") as f:
      json.dump(meta, f, indent=2)
    with open(os.path.join(tmp, VARIABLES_FILE), "wb") as f:
      f.write(flax.serialization.msgpack_serialize(
          jax.tree_util.tree_map(np.asarray, self.variables)))
    if self.examples is not None:
      np.savez(os.path.join(tmp, EXAMPLES_FILE), _slot=self.examples.slot,
               _success=self.examples.success, _heldout=self.heldout,
               **self.examples.observations)
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(directory):
      os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory

  @classmethod
  def load(cls, directory: str) -> "SuccessDetector":
    path = os.path.join(directory, META_FILE)
    if not os.path.exists(path):
      raise DetectorError(f"{directory}: no saved detector ({META_FILE} missing)")
    try:
      with open(path) as f:
        meta = json.load(f)
      if meta.get("format") != FORMAT_VERSION:
        raise DetectorError(f"{path}: unsupported format {meta.get('format')!r}")
      config = dict(meta["config"])
      config.setdefault("state_distances", ())  # Saved before those features existed.
      config.setdefault("calibrate", False)
      config.setdefault("state_squares", False)  # Saved before squares and squashing.
      config.setdefault("feature_squash", 0.0)
      config.setdefault("head_folds", 1)  # Saved before fold heads.
      det = cls(EnvSpec.from_json(meta["spec"]), int(meta["max_tasks"]),
                DetectorConfig.from_dict(config))
      with open(os.path.join(directory, VARIABLES_FILE), "rb") as f:
        variables = flax.serialization.msgpack_restore(f.read())
    except (OSError, KeyError, TypeError, ValueError) as e:
      if isinstance(e, DetectorError):
        raise
      raise DetectorError(f"{directory}: malformed detector: {type(e).__name__}: {e}") from e
    shapes = jax.tree_util.tree_map(np.shape, det.variables)
    if jax.tree_util.tree_map(np.shape, variables) != shapes:
      raise DetectorError(f"{directory}: saved variables do not match the network's shapes")
    det.variables = variables
    det.version = int(meta["version"])
    det.slots = {int(s): SlotInfo(**i) for s, i in meta["slots"].items()}
    ex_path = os.path.join(directory, EXAMPLES_FILE)
    if os.path.exists(ex_path):
      with np.load(ex_path) as f:
        obs = {k: f[k] for k in f.files if not k.startswith("_")}
        det.examples = ExampleSet(obs, f["_slot"], f["_success"])
        det.heldout = f["_heldout"].astype(bool)
    return det
