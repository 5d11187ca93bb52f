"""The libvirt error table: every entry, the default, and real errors from
the test driver through a real server."""

from __future__ import annotations

import grpc
import libvirt
import pytest
from vm_provider_libvirt import errors

from provider_core import errors as core
from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

CASES = [(rule, code) for rule in errors.TABLE for code in sorted(rule.codes)]


def libvirt_error(code: int, message: str, domain: int = libvirt.VIR_FROM_QEMU) -> libvirt.libvirtError:
    """A libvirtError as libvirt raises it (its ``err`` tuple filled in)."""
    exc = libvirt.libvirtError(message)
    exc.err = (code, domain, message, libvirt.VIR_ERR_ERROR, None, None, None, 0, 0)
    return exc


@pytest.mark.parametrize(("rule", "code"), CASES, ids=[f"{r.error.__name__}-{c}" for r, c in CASES])
def test_every_table_entry_maps_its_codes(rule: errors.Rule, code: int) -> None:
    message = f"something happened: {rule.phrase or 'details'}"
    got = errors.translate(libvirt_error(code, message), "VM 'web-1'")
    assert type(got) is rule.error
    assert str(got).startswith("VM 'web-1': ")
    assert message in str(got)


def test_a_phrase_rule_needs_its_phrase() -> None:
    exists = errors.translate(libvirt_error(libvirt.VIR_ERR_OPERATION_FAILED, "domain 'x' already exists with uuid ..."))
    other = errors.translate(libvirt_error(libvirt.VIR_ERR_OPERATION_FAILED, "could not do it"))
    assert isinstance(exists, core.AlreadyExists)
    assert type(other) is core.Internal


def test_unmapped_code_is_internal_and_keeps_libvirts_message() -> None:
    got = errors.translate(libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, "qemu unexpectedly closed the monitor"))
    assert type(got) is core.Internal
    assert "qemu unexpectedly closed the monitor" in str(got)


def test_errors_of_the_rpc_layer_are_unavailable_and_mean_a_lost_connection() -> None:
    exc = libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, "client socket is closed", libvirt.VIR_FROM_RPC)
    assert isinstance(errors.translate(exc), core.Unavailable)
    assert errors.connection_lost(exc)
    odd = libvirt_error(libvirt.VIR_ERR_OPERATION_FAILED, "oops", libvirt.VIR_FROM_RPC)
    assert isinstance(errors.translate(odd), core.Unavailable)
    assert not errors.connection_lost(libvirt_error(libvirt.VIR_ERR_NO_DOMAIN, "no domain"))


def test_no_code_sits_in_two_unconditional_rules() -> None:
    seen: dict[int, str] = {}
    for rule in errors.TABLE:
        if rule.phrase:
            continue
        for code in rule.codes:
            assert code not in seen, f"code {code} in {seen.get(code)} and {rule.error.__name__}: the second is unreachable"
            seen[code] = rule.error.__name__


def test_real_libvirt_errors_reach_clients_with_their_codes(harness: ProviderHarness) -> None:
    stub = harness.stub
    made = stub.Create(pb.CreateRequest(name="mine"))
    harness.wait(made.task)
    with pytest.raises(grpc.RpcError) as info:
        stub.SnapshotRevert(pb.SnapshotRevertRequest(vm_id=made.id, snapshot_id="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in (info.value.details() or "")
    # Destroying a stopped domain is an invalid operation: FAILED_PRECONDITION.
    backend = harness.backend
    dom = backend.session.lookup("foreign-vm")  # type: ignore[attr-defined]
    dom.destroy()
    with pytest.raises(libvirt.libvirtError) as raised:
        dom.destroy()
    assert isinstance(backend.session.translate(raised.value), core.FailedPrecondition)  # type: ignore[attr-defined]


CONDITIONS = [
    (errors.is_missing_domain, libvirt.VIR_ERR_NO_DOMAIN),
    (errors.is_missing_snapshot, libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT),
    (errors.is_missing_volume, libvirt.VIR_ERR_NO_STORAGE_VOL),
    (errors.is_missing_pool, libvirt.VIR_ERR_NO_STORAGE_POOL),
    (errors.is_missing_network, libvirt.VIR_ERR_NO_NETWORK),
    (errors.is_missing_interface, libvirt.VIR_ERR_NO_INTERFACE),
    (errors.is_volume_taken, libvirt.VIR_ERR_STORAGE_VOL_EXIST),
    (errors.is_unsupported, libvirt.VIR_ERR_NO_SUPPORT),
    (errors.is_invalid_in_state, libvirt.VIR_ERR_OPERATION_INVALID),
    (errors.is_flag_refused, libvirt.VIR_ERR_INVALID_ARG),
    (errors.is_flag_refused, libvirt.VIR_ERR_NO_SUPPORT),
]


@pytest.mark.parametrize(("condition", "code"), CONDITIONS, ids=[f"{c.__name__}-{code}" for c, code in CONDITIONS])
def test_each_condition_names_its_codes_and_no_other(condition: errors.Condition, code: int) -> None:
    assert condition(libvirt_error(code, "it happened"))
    assert not condition(libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, "something else"))


def test_every_named_condition_is_tested() -> None:
    named = {getattr(errors, n) for n in dir(errors) if n.startswith("is_")}
    assert named == {c for c, _ in CONDITIONS}


def test_ignoring_ends_quietly_only_what_it_names() -> None:
    missing = libvirt_error(libvirt.VIR_ERR_NO_STORAGE_VOL, "no volume")
    with errors.ignoring(errors.is_missing_domain, errors.is_missing_volume):
        raise missing
    other = libvirt_error(libvirt.VIR_ERR_NO_STORAGE_POOL, "no pool")
    with pytest.raises(libvirt.libvirtError) as raised, errors.ignoring(errors.is_missing_volume):
        raise other
    assert raised.value is other
    with pytest.raises(TypeError, match="name the conditions"), errors.ignoring():
        pass


def test_best_effort_logs_a_failed_cleanup_instead_of_raising(caplog: pytest.LogCaptureFixture) -> None:
    with errors.best_effort("remove volume 'x'"):
        raise libvirt_error(libvirt.VIR_ERR_OPERATION_FAILED, "volume is busy")
    assert "could not remove volume 'x': volume is busy" in caplog.text
    with pytest.raises(ValueError, match="not libvirt"), errors.best_effort("anything"):
        raise ValueError("not libvirt")
