"""Federated fine-tuning with federated dropout on Flower's simulation engine (``flwr`` 1.42, its Message API; the
optional extra ``speechprune[federated]``).

Each round the server (:class:`DropoutFedAvg`, FedAvg with its two per-round hooks replaced) draws every client a
:class:`~speechprune.federated.dropout.DropPlan`, cuts a physically smaller copy of the global model with the
toolkit's structured surgery (:func:`~speechprune.federated.dropout.sub_model`) and sends that copy's tensors and
the plan down; the client rebuilds the same structure from its own copy of the model, loads the tensors, fine-tunes
on its own clips (the family's supervised loss on their reference texts: ``Labeller.reference_batches``) and sends
its sub-model back; the server scatters each update into the global shapes and averages each element over the
clients that held it, weighted by their examples (:func:`~speechprune.federated.dropout.average`). The bytes sent
down and up are counted per client and round: what dropout saves on the wire.

Family-neutral: a batch is the model's forward arguments and ``model(**batch).loss`` its loss, and the unit groups
come from the family's adapter, so a Whisper, a Conformer CTC or a wav2vec2 model runs the same code.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..errors import ConfigError
from ..models.units import Adapter
from .dropout import DropPlan, average, bytes_of, drop_plan, sub_model, unit_slices

FLWR_VERSION = "1.42.0"


class FederatedSettings(BaseModel):
    """One federated run: rounds, each client's local fine-tuning, and what federated dropout removes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rounds: int = Field(default=2, ge=1)
    local_steps: int = Field(default=4, ge=1)  # optimizer steps per client and round
    lr: float = Field(default=1e-4, gt=0)
    grad_clip: float = Field(default=1.0, gt=0)
    # "none": plain FedAvg (every client gets the whole model); otherwise a share ``rate`` of the units of the
    # ``layers`` most critical or most ambient layers (the ablation's ranking), or ``flat`` over all layers at the
    # rate that drops as many parameters (the caller computes it: ``dropout.flat_rate``)
    aim: Literal["none", "critical", "ambient", "flat"] = "none"
    rate: float = Field(default=0.5, ge=0, lt=1)
    seed: int = 0


def client_seed(seed: int, server_round: int, client: int) -> int:
    """The seed of one client's draw and local training in one round (a pure function, so a rerun is the same)."""
    return random.Random(f"{seed}/{server_round}/{client}").randrange(2**31)


def local_train(model: nn.Module, batches: list[dict], settings: FederatedSettings, server_round: int,
                seed: int) -> tuple[float, int]:
    """``settings.local_steps`` AdamW steps on ``batches`` (taken in turn from where the round starts); returns the
    mean loss and the examples seen."""
    if not batches:
        raise ConfigError("a federated client has no batches to train on")
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    losses, examples = [], 0
    for step in range(settings.local_steps):
        batch = batches[((server_round - 1) * settings.local_steps + step) % len(batches)]
        out = model(**{k: v.to(device) for k, v in batch.items()})
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        opt.step()
        losses.append(float(out.loss.detach()))
        examples += len(next(iter(batch.values())))
    model.eval()
    return sum(losses) / len(losses), examples


def _plan_to_text(plan: DropPlan) -> str:
    return json.dumps({k: list(v) for k, v in plan.keep.items()}, sort_keys=True)


def _plan_from_text(text: str) -> DropPlan:
    return DropPlan({k: tuple(int(i) for i in v) for k, v in json.loads(text).items()})


@dataclass
class Traffic:
    """What one run sent: one row per client and round (``round``; ``client``, the node's place among the sorted
    node ids, which seeds its draw; ``node``; ``partition``, whose clips it trained on; ``dropped_share``,
    ``bytes_down``, ``bytes_up``, ``loss``, ``examples``)."""

    rows: list[dict] = field(default_factory=list)


def client_app(model: nn.Module, adapter: Adapter, client_batches: list[list[dict]], settings: FederatedSettings):
    """The ``ClientApp``: client ``partition-id`` fine-tunes the sub-model the server sent on
    ``client_batches[partition-id]``."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        client = int(context.node_config["partition-id"])
        config = msg.content["config"]
        plan = _plan_from_text(str(config["plan"]))
        sub = sub_model(model, adapter, plan)
        sub.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        loss, examples = local_train(sub, client_batches[client], settings, int(config["server-round"]),
                                     int(config["seed"]))
        metrics = MetricRecord({"num-examples": examples, "train-loss": loss, "client": client})
        return Message(RecordDict({"arrays": ArrayRecord(sub.state_dict()), "metrics": metrics}), reply_to=msg)

    return app


def dropout_strategy(model: nn.Module, adapter: Adapter, layers: set[tuple[str, int]], settings: FederatedSettings,
                     clients: int, traffic: Traffic):
    """FedAvg over all ``clients`` every round, each client with its own sub-model (see the module); ``layers``:
    where units are dropped (empty: every client gets the whole model)."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
    from flwr.serverapp.strategy import FedAvg

    groups = adapter.unit_groups(model)

    class DropoutFedAvg(FedAvg):
        def configure_train(self, server_round, arrays, config, grid):
            nodes = sorted(grid.get_node_ids())
            if len(nodes) < self.min_train_nodes:
                raise ConfigError(f"federated training needs {self.min_train_nodes} clients; {len(nodes)} connected")
            model.load_state_dict(arrays.to_torch_state_dict())
            self._plans, messages = {}, []
            for i, node in enumerate(nodes):
                seed = client_seed(settings.seed, server_round, i)
                plan = drop_plan(groups, layers, settings.rate, seed) if layers else DropPlan({})
                sub = sub_model(model, adapter, plan).state_dict()
                row = {"round": server_round, "client": i, "node": node,
                       "dropped_share": plan.dropped_share(groups), "bytes_down": bytes_of(sub)}
                traffic.rows.append(row)
                self._plans[node] = (plan, row)
                content = RecordDict({"arrays": ArrayRecord(sub), "config": ConfigRecord(
                    {**dict(config), "server-round": server_round, "plan": _plan_to_text(plan), "seed": seed})})
                messages.append(Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node))
            return messages

        def aggregate_train(self, server_round, replies):
            valid, failed = self._check_and_log_replies(list(replies), is_train=True, validate=False)
            if failed:
                raise ConfigError(f"round {server_round}: {len(failed)} federated clients failed: "
                                  f"{failed[0].error.reason.strip().splitlines()[-1]}")
            global_state = model.state_dict()
            updates = []
            for msg in valid:
                plan, row = self._plans[msg.metadata.src_node_id]
                state = msg.content["arrays"].to_torch_state_dict()
                metrics = msg.content["metrics"]
                updates.append((state, unit_slices(model, adapter, plan), float(metrics["num-examples"])))
                row.update(partition=int(metrics["client"]), bytes_up=bytes_of(state),
                           loss=float(metrics["train-loss"]), examples=int(metrics["num-examples"]))
            new = average({k: v.detach() for k, v in global_state.items()}, updates)
            model.load_state_dict(new)
            return ArrayRecord(new), None

    return DropoutFedAvg(fraction_evaluate=0.0, min_train_nodes=clients, min_available_nodes=clients)


def run_federated(model: nn.Module, adapter: Adapter, client_batches: list[list[dict]], settings: FederatedSettings,
                  layers: set[tuple[str, int]] = frozenset(), cpus: int | None = None) -> Traffic:
    """Federated fine-tuning of ``model`` in place on Flower's simulation engine, one simulated client per entry
    of ``client_batches`` (each a list of the family's reference batches), all of them every round. Returns the
    traffic and loss per client and round."""
    try:
        from flwr.app import ArrayRecord, Context
        from flwr.serverapp import Grid, ServerApp
        from flwr.simulation import run_simulation
    except ImportError:
        raise ConfigError(f"federated fine-tuning needs Flower: pip install 'speechprune[federated]' "
                          f"(flwr[simulation]=={FLWR_VERSION})") from None
    if len(client_batches) < 2:
        raise ConfigError(f"federated fine-tuning needs at least 2 clients, got {len(client_batches)}")
    if settings.aim != "none" and not layers:
        raise ConfigError(f"dropout aimed at {settings.aim!r} layers needs the layers to drop units in")
    model.eval()
    traffic = Traffic()
    strategy = dropout_strategy(model, adapter, set(layers) if settings.aim != "none" else set(), settings,
                                len(client_batches), traffic)
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        state = {k: v.detach() for k, v in model.state_dict().items()}
        strategy.start(grid=grid, initial_arrays=ArrayRecord(state), num_rounds=settings.rounds)

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    cpus = cpus or max(1, min(len(client_batches), os.cpu_count() or 1))
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               # Flower starts Ray with this process's sys.path as the workers' PYTHONPATH (so they import
               # speechprune from where this process does); Ray gives each 1-CPU actor OMP_NUM_THREADS=1
               "init_args": {"num_cpus": cpus, "include_dashboard": False, "logging_level": "ERROR",
                             "log_to_driver": False}}
    run_simulation(server, client_app(model, adapter, client_batches, settings), num_supernodes=len(client_batches),
                   backend_config=backend)
    missing = {(r["round"], r["client"]) for r in traffic.rows if "bytes_up" not in r}
    if len(traffic.rows) != settings.rounds * len(client_batches) or missing:
        raise ConfigError(f"the federated run did not finish: {len(traffic.rows)} client rounds sent, "
                          f"{len(missing)} without a reply (see Flower's log above)")
    return traffic
