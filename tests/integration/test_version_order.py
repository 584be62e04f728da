"""A call whose tokens span several versions scores them resident first, then RAM-cached, then from disk.

The order changes no answer, only the work: the version already in the model costs no swap, one in the
RAM cache no disk read, and the version scored last stays in the model for the calls after it. So the
order is seen in the weight swaps the server counts.
"""

from __future__ import annotations

from logit_client import LogitClient, SequenceInput
from logit_service.snapshots.cache import state_dict_nbytes
from tests.helpers import random_tokens, scrape_metrics

SWAPS = "logit_service_weight_swaps_total"


def _swaps(server) -> float:
    return scrape_metrics(server)[SWAPS]


def test_a_call_spanning_versions_scores_the_cached_one_before_the_one_on_disk(make_server, snapshot_dir, trained):
    # A RAM cache that holds two versions' weights but not three.
    budget = int(2.5 * state_dict_nbytes(trained.states[0]))
    server = make_server(snapshot_dir, retention_window=4, cache_bytes=budget, metrics_port=0, ewma_enabled=False)
    tokens = random_tokens(40, seed=3)
    with LogitClient(server.address) as client:
        for version in range(4):
            client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)
        alone = {v: client.score([SequenceInput(tokens, spans=((v, 1, 40),))])[0] for v in (1, 2, 3)}
        # Scored 1, 2, 3 in turn: 3 is in the model, 2 and 3 in the RAM cache, 1 only on disk.
        assert server.running.store.cache.keys() == ["2", "3"]
        before = _swaps(server)

        # Resident first (3 is not asked for), then the cached 2, then 1 from disk: two swaps, and
        # 1 stays in the model. Cached and uncached ranked alike would score 1 first and leave 2.
        mixed = client.score([SequenceInput(tokens, spans=((1, 1, 20), (2, 20, 40)))])[0]
        assert _swaps(server) - before == 2
        client.score([SequenceInput(tokens, spans=((2, 1, 40),))])
        assert _swaps(server) - before == 3  # 2 had to be swapped back in

    # The order changes no answer: each span is bit for bit its version's own.
    assert mixed.logprobs[1:20].tolist() == alone[1].logprobs[1:20].tolist()
    assert mixed.logprobs[20:].tolist() == alone[2].logprobs[20:].tolist()
