"""How the command line sets OpenMP's waiting before torch loads: sleeping workers, a short spin
first only on an idle machine, explicit settings kept."""
from assigndet.cli import IDLE_SPINCOUNT, openmp_waiting


def test_an_idle_machine_gets_a_short_spin_before_workers_sleep():
    env = {}
    openmp_waiting(env, load=0.1)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": str(IDLE_SPINCOUNT)}


def test_a_loaded_machine_lets_workers_sleep_at_once():
    env = {}
    openmp_waiting(env, load=1.3)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_settings_in_the_environment_win():
    env = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "0"}
    openmp_waiting(env, load=0.0)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "0"}


def test_an_explicit_policy_keeps_its_own_spin_count():
    """libgomp: GOMP_SPINCOUNT overrides the policy's default (ACTIVE's long spin, PASSIVE's none)."""
    for policy in ("ACTIVE", "PASSIVE"):
        env = {"OMP_WAIT_POLICY": policy}
        openmp_waiting(env, load=0.0)
        assert env == {"OMP_WAIT_POLICY": policy}
