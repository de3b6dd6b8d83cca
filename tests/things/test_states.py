"""ActionState: the lifecycle of an action request in the public API."""

from __future__ import annotations

from safething.things import FINAL_STATES, ActionState, Thing, ThingClient


def test_states_are_the_stored_strings() -> None:
    assert [s.value for s in ActionState] == [
        "requested",
        "accepted",
        "running",
        "done",
        "failed",
        "rejected",
        "timed_out",
        "cancelled",
    ]
    assert ActionState("done") is ActionState.DONE
    assert "done" in FINAL_STATES and ActionState.DONE.final
    assert not ActionState.RUNNING.final


async def test_a_request_ends_in_a_final_state(garden: Thing, owner_client: ThingClient) -> None:
    garden.on_action("CloseValve", lambda request: None)
    await garden.publish()
    handle = await owner_client.request(garden.id, "CloseValve", timeout=30)
    await handle.result()
    assert handle.status.state == ActionState.DONE
    assert ActionState(handle.status.state).final
