"""Loading SB3 ``agent.zip`` files without unpickling anything (docs/ARCHITECTURE.md).

SB3's zip holds a JSON ``data`` file whose non-JSON entries (``policy_class``,
``observation_space``, ``action_space``, ``lr_schedule``, ``clip_range``, buffer classes,
``train_freq``, ``_last_obs``, ...) are cloudpickle blobs under a ``":serialized:"`` key, which
``stable_baselines3.common.save_util.json_to_data`` would ``cloudpickle.loads`` — running
whatever code the file carries. :func:`load_sb3_zip` never calls it:

1. the ``data`` JSON is parsed with :func:`json.loads`; each serialized entry is only
   *scanned* (:func:`~falcon_rl.agents.pickle_scan.pickle_globals`): the globals it would
   import must be the ones falcon-rl's own agents write for that entry (e.g. the declared
   algorithm's policy class, gymnasium spaces, SB3 schedules); anything else is refused with
   a message naming the file, the entry and the opt-in ``--trust-agent-file``
   (``agent.trust_agent_file``);
2. every serialized entry is then *rebuilt* from the config (spaces from the scheduler spec,
   the policy class from the declared algorithm, schedules from the JSON learning rate,
   ``policy_kwargs`` from its JSON-visible items and a whitelist of classes) or dropped
   (``_last_obs``, episode buffers: training-loop state a frozen agent does not need);
3. the declared algorithm (``falcon_rl_algorithm``) and shapes (``_shape`` of both spaces)
   are checked against the config, and the weights (``*.pth``) are read with
   ``torch.load(weights_only=True)`` into the parameter names the algorithm expects.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.utils import FloatSchedule

from falcon_rl.agents.pickle_scan import PickleScanError, pickle_globals

#: data key naming the algorithm that wrote the zip (set by SB3Scheduler.save)
ALGO_KEY = "falcon_rl_algorithm"
TRUST_HINT = ("pass --trust-agent-file (config agent.trust_agent_file=true) only if you trust where "
              "this file came from: its pickled entries would then be executed")

_NUMPY_ARRAY = {("numpy", "dtype"), ("numpy", "ndarray"), ("numpy._core.numeric", "_frombuffer"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
                ("numpy.core.multiarray", "scalar")}
_NUMPY_RNG = {("numpy.random._pcg64", "PCG64"), ("numpy.random._pickle", "__bit_generator_ctor"),
              ("numpy.random._pickle", "__generator_ctor"), ("numpy.random.bit_generator", "SeedSequence"),
              ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence")}
_SPACES = {("gymnasium.spaces.box", "Box"), ("gymnasium.spaces.multi_discrete", "MultiDiscrete"),
           ("gymnasium.spaces.discrete", "Discrete")} | _NUMPY_ARRAY | _NUMPY_RNG
_SCHEDULES = {("stable_baselines3.common.utils", n) for n in ("FloatSchedule", "ConstantSchedule",
                                                              "LinearSchedule")}
#: classes a policy_kwargs entry may name (by their repr in the JSON) -> the class
KWARG_CLASSES: dict[str, type] = {
    str(c): c for c in (torch.optim.RMSprop, torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD,
                        torch.nn.ReLU, torch.nn.Tanh, torch.nn.ELU, torch.nn.GELU, torch.nn.LeakyReLU,
                        torch.nn.SiLU)
}
_KWARG_GLOBALS = {(c.__module__, c.__name__) for c in KWARG_CLASSES.values()}
_POLICY_MODULE = "falcon_rl.agents.sb3_policies"

#: serialized entry -> the globals its pickle may import when falcon-rl wrote it
ENTRY_GLOBALS: dict[str, set[tuple[str, str]]] = {
    "observation_space": _SPACES,
    "action_space": _SPACES,
    "lr_schedule": _SCHEDULES,
    "clip_range": _SCHEDULES,
    "clip_range_vf": _SCHEDULES,
    "rollout_buffer_class": {("stable_baselines3.common.buffers", "RolloutBuffer")},
    "replay_buffer_class": {("stable_baselines3.common.buffers", "ReplayBuffer")},
    "train_freq": {("stable_baselines3.common.type_aliases", "TrainFreq"),
                   ("stable_baselines3.common.type_aliases", "TrainFrequencyUnit")},
    "policy_kwargs": _KWARG_GLOBALS,
    "_last_obs": _NUMPY_ARRAY,
    "_last_episode_starts": _NUMPY_ARRAY,
    "_last_original_obs": _NUMPY_ARRAY,
    "ep_info_buffer": {("collections", "deque")} | _NUMPY_ARRAY,
    "ep_success_buffer": {("collections", "deque")} | _NUMPY_ARRAY,
    "policy_class": set(),  # checked against the declared algorithm's policy class
}
#: training-loop state a loaded agent starts without (SB3 resets the env before learning)
DROPPED = ("_last_obs", "_last_episode_starts", "_last_original_obs", "ep_info_buffer", "ep_success_buffer")


class AgentFileError(ValueError):
    """An agent file cannot be loaded; the message names the file and the reason."""


class UntrustedAgentFile(AgentFileError):
    """Loading the file would need unpickling (refused unless ``--trust-agent-file``)."""


@dataclass
class AgentZip:
    """What an SB3 zip holds, read without unpickling.

    :ivar data: the ``data`` JSON (serialized entries still as ``{":serialized:": ...}``).
    :ivar serialized: serialized entry -> the globals its pickle would import.
    :ivar params: ``*.pth`` state dicts by name (``policy``, ``policy.optimizer``, ...).
    :ivar variables: ``pytorch_variables.pth`` (e.g. SAC's ``log_ent_coef``).
    """

    path: Path
    data: dict[str, Any]
    serialized: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, Any] = field(default_factory=dict)


def _torch_member(path: Path, zf: zipfile.ZipFile, member: str) -> Any:
    try:
        return torch.load(io.BytesIO(zf.read(member)), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - name the file and member whatever torch raised
        raise AgentFileError(f"{path}: member {member!r} is not a tensor file loadable with "
                             f"weights_only=True ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def read_agent_zip(path: str | Path) -> AgentZip:
    """Parse an SB3 zip: JSON ``data``, scanned serialized entries, weights (``weights_only``)."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise AgentFileError(f"{path}: not a Stable-Baselines3 agent zip ({e})") from None
    with zf:
        names = zf.namelist()
        if "data" not in names:
            raise AgentFileError(f"{path}: not a Stable-Baselines3 agent zip (no 'data' member)")
        try:
            data = json.loads(zf.read("data").decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, zipfile.BadZipFile, OSError) as e:
            raise AgentFileError(f"{path}: its 'data' member is not JSON ({e})") from None
        if not isinstance(data, dict):
            raise AgentFileError(f"{path}: its 'data' member is not a JSON object")
        out = AgentZip(path, data)
        for key, value in data.items():
            if isinstance(value, dict) and ":serialized:" in value:
                try:
                    raw = base64.b64decode(str(value[":serialized:"]).encode(), validate=True)
                    out.serialized[key] = pickle_globals(raw)
                except (binascii.Error, ValueError, PickleScanError) as e:
                    raise UntrustedAgentFile(f"{path}: entry {key!r} is a pickle falcon-rl cannot inspect "
                                             f"({e}); {TRUST_HINT}") from None
        for member in names:
            if not member.endswith(".pth"):
                continue
            blob = _torch_member(path, zf, member)
            if member == "pytorch_variables.pth":
                out.variables = dict(blob or {})
            else:
                out.params[member[:-len(".pth")]] = blob
    return out


def declared_algorithm(path: str | Path, known: tuple[str, ...]) -> str:
    """The ``falcon_rl_algorithm`` entry of the zip's JSON (no unpickling)."""
    try:
        with zipfile.ZipFile(path) as zf:
            data = json.loads(zf.read("data").decode())
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AgentFileError(f"{path}: not a Stable-Baselines3 zip ({e})") from None
    name = data.get(ALGO_KEY) if isinstance(data, dict) else None
    if name in known:
        return name
    raise AgentFileError(f"{path}: cannot tell which SB3 algorithm wrote it (no {ALGO_KEY!r} entry "
                         f"naming one of {list(known)})")


def check_entries(agent: AgentZip, policy_class: type) -> None:
    """Refuse (:class:`UntrustedAgentFile`) any serialized entry falcon-rl would not have written."""
    expected_policy = (policy_class.__module__, policy_class.__name__)
    for key, found in agent.serialized.items():
        if key not in ENTRY_GLOBALS:
            raise UntrustedAgentFile(f"{agent.path}: entry {key!r} is a pickle falcon-rl never writes; {TRUST_HINT}")
        allowed = {expected_policy} if key == "policy_class" else ENTRY_GLOBALS[key]
        odd = sorted(found - allowed)
        if odd:
            names = ", ".join(f"{m}.{n}" for m, n in odd[:3])
            raise UntrustedAgentFile(f"{agent.path}: entry {key!r} is a pickle that would import {names}, "
                                     f"which falcon-rl's own {policy_class.__name__} agents never store; "
                                     f"refused without unpickling; {TRUST_HINT}")


def _declared_shape(agent: AgentZip, key: str) -> tuple[int, ...] | None:
    entry = agent.data.get(key)
    shape = entry.get("_shape") if isinstance(entry, dict) else None
    if isinstance(shape, list) and all(isinstance(s, int) for s in shape):
        return tuple(shape)
    return None


def check_spaces(agent: AgentZip, observation_space: spaces.Space, action_space: spaces.Space) -> None:
    """The zip's declared space shapes and action type must be the config's."""
    for key, space, what in (("observation_space", observation_space, "mining.search_space / mining.state_* flags"),
                             ("action_space", action_space, "mining.search_space / experimental.action")):
        shape = _declared_shape(agent, key)
        if shape is None:
            raise AgentFileError(f"{agent.path}: entry {key!r} does not declare its shape")
        if shape != tuple(space.shape):
            raise AgentFileError(f"{agent.path}: agent was trained on {key.split('_')[0]}s of shape {shape}, "
                                 f"this config gives {tuple(space.shape)} ({what})")
    declared = agent.serialized.get("action_space", set())
    kind = "MultiDiscrete" if ("gymnasium.spaces.multi_discrete", "MultiDiscrete") in declared else "Box"
    if kind != type(action_space).__name__:
        raise AgentFileError(f"{agent.path}: agent acts with {kind} actions, this config gives "
                             f"{type(action_space).__name__} (experimental.action)")


def rebuild_policy_kwargs(agent: AgentZip) -> dict[str, Any]:
    """``policy_kwargs`` from the JSON: plain, or the JSON-visible items of a serialized dict
    with class reprs mapped through :data:`KWARG_CLASSES`."""
    raw = agent.data.get("policy_kwargs") or {}
    if not isinstance(raw, dict):
        raise AgentFileError(f"{agent.path}: entry 'policy_kwargs' is not a mapping")
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k.startswith(":") or k == "device":
            continue
        if isinstance(v, str) and v.startswith("<class "):
            if v not in KWARG_CLASSES:
                raise UntrustedAgentFile(f"{agent.path}: policy_kwargs[{k!r}] names {v}, not a class falcon-rl "
                                         f"accepts; {TRUST_HINT}")
            v = KWARG_CLASSES[v]
        out[k] = v
    return out


def load_sb3_zip(path: str | Path, algo: type[BaseAlgorithm], policy_class: type,
                 observation_space: spaces.Space, action_space: spaces.Space, agent_kwargs: dict[str, Any],
                 env: Any = None) -> BaseAlgorithm:
    """An SB3 model of class ``algo`` from the zip at ``path``, with no unpickling (module doc).

    :param observation_space, action_space: the spaces the SB3 model sees (after wrappers).
    :param agent_kwargs: the config's algorithm keyword arguments (``clip_range``, ``train_freq``
        defaults for rebuilt entries).
    :param env: an SB3-wrapped env to keep learning on (None: inference only).
    """
    agent = read_agent_zip(path)
    check_entries(agent, policy_class)
    check_spaces(agent, observation_space, action_space)
    data = {k: v for k, v in agent.data.items() if k not in agent.serialized and k != ALGO_KEY}
    lr = data.get("learning_rate")
    lr = float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else 1e-3
    data.update(policy_class=policy_class, observation_space=observation_space, action_space=action_space,
                lr_schedule=FloatSchedule(lr), policy_kwargs=rebuild_policy_kwargs(agent))
    for key in DROPPED:
        data[key] = None
    if "rollout_buffer_class" in agent.data:
        data["rollout_buffer_class"] = None  # SB3 picks RolloutBuffer for Box observations
    if "replay_buffer_class" in agent.data:
        data["replay_buffer_class"] = None  # ReplayBuffer
    if "train_freq" in agent.data:
        data["train_freq"] = agent_kwargs.get("train_freq", 1)
    if "clip_range" in agent.data:
        clip = agent_kwargs.get("clip_range", 0.2)
        data["clip_range"] = float(clip) if isinstance(clip, (int, float)) else 0.2
    if "clip_range_vf" in agent.data:
        data["clip_range_vf"] = None
    if env is not None:
        data["n_envs"] = env.num_envs
    model = algo(policy=policy_class, env=env, device="cpu", _init_setup_model=False)
    excluded = set(model._excluded_save_params())
    # plain JSON values cannot run code, but must not replace methods or live objects
    data = {k: v for k, v in data.items() if not k.startswith("__") and k not in excluded
            and not callable(getattr(type(model), k, None)) and not isinstance(getattr(type(model), k, None), property)}
    model.__dict__.update(data)
    try:
        model._setup_model()
    except (TypeError, ValueError, KeyError) as e:
        raise AgentFileError(f"{path}: cannot rebuild the {algo.__name__} agent from its JSON entries "
                             f"({type(e).__name__}: {e})") from None
    expected, variables = model._get_torch_save_params()
    missing, extra = set(expected) - set(agent.params), set(agent.params) - set(expected)
    if missing or extra:
        raise AgentFileError(f"{path}: weight files {sorted(agent.params)} do not match what {algo.__name__} "
                             f"stores ({sorted(expected)})")
    try:
        model.set_parameters(agent.params, exact_match=True, device="cpu")
    except (RuntimeError, ValueError, KeyError) as e:
        raise AgentFileError(f"{path}: its weights do not fit the {algo.__name__} policy this config builds "
                             f"({str(e).splitlines()[0][:300]})") from None
    for name, value in agent.variables.items():
        if value is None:
            continue
        if name not in variables or not isinstance(value, torch.Tensor):
            raise AgentFileError(f"{path}: unexpected pytorch variable {name!r} in pytorch_variables.pth")
        target = model
        for part in name.split("."):
            target = getattr(target, part)
        target.data = value.data.to(target.device)
    if model.use_sde:
        model.policy.reset_noise()  # type: ignore[operator]
    return model

