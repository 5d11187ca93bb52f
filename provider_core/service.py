"""The provider.v1.Provider servicer: convert in, one call, convert out.

Each RPC hands its request's fields to :meth:`Runtime.call
<provider_core.runtime.Runtime.call>` with its entry of the one table
(:mod:`provider_core.operations`), which checks the request (its model) and
the capability and runs the backend, then converts the answer. No logic
and no error handling here: errors are answered once, by the registration
wrapper of :mod:`provider_core.status` (:func:`add_to_server`). An answer
long enough to hold up the event loop while it is converted (ListVMs) is
converted and encoded in a worker thread (:meth:`Runtime.compute
<provider_core.runtime.Runtime.compute>`).
"""

from __future__ import annotations

import json
import logging
from typing import Any, TypeAlias

import grpc
import orjson

from . import operations as ops
from .capabilities import Capability
from .models import PowerState, PreparedImage, VMInfo, VMStatus
from .pb import provider_pb2 as pb
from .pb import provider_pb2_grpc as pb_grpc
from .runtime import Runtime
from .status import GuardedRegistrar

Ctx: TypeAlias = grpc.aio.ServicerContext
log = logging.getLogger(__name__)
CLIENT_MESSAGE_LIMIT = 4 * 2**20
"""What gRPC clients accept in one message unless told otherwise."""


def fields(message: Any) -> dict[str, Any]:
    """A message's fields by name as plain Python values: lists, dicts,
    nested messages as dicts, enum values as their names (an unknown
    number stays a number, for the request model to refuse)."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = dict(value)
        elif field.is_repeated:
            value = list(value)
        elif field.message_type is not None:
            value = fields(value)
        elif field.enum_type is not None:
            known = field.enum_type.values_by_number.get(value)
            value = known.name if known is not None else value
        out[field.name] = value
    return out


def _task(task_id: str) -> pb.TaskRef | None:
    return pb.TaskRef(id=task_id) if task_id else None


def _raw_json(raw: dict[str, Any]) -> str:
    """provider_raw_json: keys sorted, values JSON cannot hold as their str()."""
    try:
        return orjson.dumps(raw, default=str, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, say
        return json.dumps(raw, sort_keys=True, default=str)


class ProviderService(pb_grpc.ProviderServicer):
    """``detailed_power``: power_state carries the four words of
    :class:`~provider_core.models.PowerState`; without it On and Off only
    (:meth:`PowerState.word <provider_core.models.PowerState.word>`, the
    server's ``power_states`` setting)."""

    def __init__(self, runtime: Runtime, *, detailed_power: bool = False) -> None:
        self.rt = runtime
        self.detailed_power = detailed_power

    async def _call(self, op: ops.Operation, request: Any, context: Ctx) -> tuple[Any, str]:
        return await self.rt.call(op, fields(request), context.time_remaining())

    async def GetCapabilities(self, request: pb.GetCapabilitiesRequest, context: Ctx) -> pb.GetCapabilitiesResponse:
        offer = self.rt.offered()
        caps = offer.capabilities
        return pb.GetCapabilitiesResponse(
            supports_reconfigure_online=Capability.RECONFIGURE_ONLINE in caps,
            supports_disk_expansion_online=Capability.DISK_EXPANSION_ONLINE in caps,
            supports_snapshots=Capability.SNAPSHOTS in caps,
            supports_memory_snapshots=Capability.MEMORY_SNAPSHOTS in caps,
            supports_linked_clones=Capability.LINKED_CLONES in caps,
            supports_image_import=Capability.IMAGE_PREPARE in caps,
            supported_disk_types=list(offer.disk_types),
            supported_network_types=list(offer.network_types),
            supports_disk_export=Capability.DISK_EXPORT in caps,
            supports_disk_import=Capability.DISK_IMPORT in caps,
            supported_export_formats=list(offer.export_formats),
            supported_import_formats=list(offer.import_formats),
            supports_export_compression=Capability.EXPORT_COMPRESSION in caps,
            supported_export_backends=list(offer.export_backends),
            supported_import_backends=list(offer.import_backends),
            supported_transfer_modes=list(offer.transfer_modes),
        )

    async def Validate(self, request: pb.ValidateRequest, context: Ctx) -> pb.ValidateResponse:
        report, _ = await self._call(ops.VALIDATE, request, context)
        return pb.ValidateResponse(ok=report.ok, message=report.message)

    async def Create(self, request: pb.CreateRequest, context: Ctx) -> pb.CreateResponse:
        vm_id, task = await self._call(ops.CREATE, request, context)
        return pb.CreateResponse(id=str(vm_id), task=_task(task))

    async def Describe(self, request: pb.DescribeRequest, context: Ctx) -> pb.DescribeResponse:
        status: VMStatus | None
        status, _ = await self._call(ops.DESCRIBE, request, context)
        if status is None:
            return pb.DescribeResponse(exists=False, power_state=PowerState.UNKNOWN.word(self.detailed_power))
        return pb.DescribeResponse(
            exists=True,
            power_state=status.power_state.word(self.detailed_power),
            ips=status.ips,
            console_url=status.console_url,
            provider_raw_json=_raw_json(status.raw),
        )

    async def ListVMs(self, request: pb.ListVMsRequest, context: Ctx) -> bytes:
        vms, _ = await self._call(ops.LIST_VMS, request, context)
        return await self.rt.compute(self._list_answer, vms)

    def _list_answer(self, vms: list[VMInfo]) -> bytes:
        """The ListVMsResponse of ``vms``, encoded, in a worker thread: ten
        thousand VMs take a few hundred milliseconds, which the event loop
        would not serve a call in. Each VM is encoded on its own (an
        encoding of one entry of ``vms``), so that the loop's thread gets
        the interpreter between them; encodings of a message joined are the
        encoding of the message with their repeated fields joined."""
        entries = [
            pb.ListVMsResponse(
                vms=[
                    pb.VMInfo(
                        id=vm.id,
                        name=vm.name,
                        power_state=vm.power_state.word(self.detailed_power),
                        ips=vm.ips,
                        cpu=vm.cpu,
                        memory_mib=vm.memory_mib,
                        disks=[pb.DiskInfo(id=d.id, path=d.path, size_gib=d.size_gib, format=d.format) for d in vm.disks],
                        networks=[pb.NetworkInfo(name=n.name, mac=n.mac, ip_address=n.ip_address) for n in vm.networks],
                        provider_raw=vm.raw,
                    )
                ]
            ).SerializeToString()
            for vm in vms
        ]
        encoded = b"".join(entries)
        if len(encoded) > CLIENT_MESSAGE_LIMIT:
            log.warning(
                "ListVMs answers %d VMs in %d bytes, more than a client's default message limit of %d",
                len(vms),
                len(encoded),
                CLIENT_MESSAGE_LIMIT,
            )
        return encoded

    async def Power(self, request: pb.PowerRequest, context: Ctx) -> pb.TaskResponse:
        _, task = await self._call(ops.POWER, request, context)
        return pb.TaskResponse(task=_task(task))

    async def Delete(self, request: pb.DeleteRequest, context: Ctx) -> pb.TaskResponse:
        _, task = await self._call(ops.DELETE, request, context)
        return pb.TaskResponse(task=_task(task))

    async def Reconfigure(self, request: pb.ReconfigureRequest, context: Ctx) -> pb.TaskResponse:
        _, task = await self._call(ops.RECONFIGURE, request, context)
        return pb.TaskResponse(task=_task(task))

    async def SnapshotCreate(self, request: pb.SnapshotCreateRequest, context: Ctx) -> pb.SnapshotCreateResponse:
        snapshot_id, task = await self._call(ops.SNAPSHOT_CREATE, request, context)
        return pb.SnapshotCreateResponse(snapshot_id=str(snapshot_id), task=_task(task))

    async def SnapshotRevert(self, request: pb.SnapshotRevertRequest, context: Ctx) -> pb.TaskResponse:
        _, task = await self._call(ops.SNAPSHOT_REVERT, request, context)
        return pb.TaskResponse(task=_task(task))

    async def SnapshotDelete(self, request: pb.SnapshotDeleteRequest, context: Ctx) -> pb.TaskResponse:
        _, task = await self._call(ops.SNAPSHOT_DELETE, request, context)
        return pb.TaskResponse(task=_task(task))

    async def Clone(self, request: pb.CloneRequest, context: Ctx) -> pb.CloneResponse:
        vm_id, task = await self._call(ops.CLONE, request, context)
        return pb.CloneResponse(target_vm_id=str(vm_id), task=_task(task))

    async def ImagePrepare(self, request: pb.ImagePrepareRequest, context: Ctx) -> pb.ImagePrepareResponse:
        prepared: PreparedImage | None
        prepared, task = await self._call(ops.IMAGE_PREPARE, request, context)
        return pb.ImagePrepareResponse(
            task=_task(task),
            prepared_image_id=prepared.id if prepared else "",
            prepared_image_path=prepared.path if prepared else "",
        )

    async def GetDiskInfo(self, request: pb.GetDiskInfoRequest, context: Ctx) -> pb.GetDiskInfoResponse:
        d, _ = await self._call(ops.GET_DISK_INFO, request, context)
        return pb.GetDiskInfoResponse(
            disk_id=d.disk_id,
            format=d.format,
            virtual_size_bytes=d.virtual_size_bytes,
            actual_size_bytes=d.actual_size_bytes,
            path=d.path,
            is_bootable=d.is_bootable,
            snapshots=d.snapshots,
            backing_file=d.backing_file,
            metadata=d.metadata,
        )

    async def ExportDisk(self, request: pb.ExportDiskRequest, context: Ctx) -> pb.ExportDiskResponse:
        result, task = await self._call(ops.EXPORT_DISK, request, context)
        return pb.ExportDiskResponse(
            export_id=result.export_id,
            task=_task(task),
            estimated_size_bytes=result.estimated_size_bytes,
            checksum=result.checksum,
        )

    async def ImportDisk(self, request: pb.ImportDiskRequest, context: Ctx) -> pb.ImportDiskResponse:
        result, task = await self._call(ops.IMPORT_DISK, request, context)
        return pb.ImportDiskResponse(
            disk_id=result.disk_id,
            path=result.path,
            task=_task(task),
            actual_size_bytes=result.actual_size_bytes,
            checksum=result.checksum,
        )

    async def HardwareUpgrade(self, request: pb.HardwareUpgradeRequest, context: Ctx) -> pb.TaskResponse:
        _, task = await self._call(ops.HARDWARE_UPGRADE, request, context)
        return pb.TaskResponse(task=_task(task))

    async def TaskStatus(self, request: pb.TaskStatusRequest, context: Ctx) -> pb.TaskStatusResponse:
        state, _ = await self._call(ops.TASK_STATUS, request, context)
        return pb.TaskStatusResponse(done=state.done, error=state.error)


def add_to_server(service: ProviderService, registrar: GuardedRegistrar) -> None:
    """Register ``service`` through the one registration wrapper."""
    pb_grpc.add_ProviderServicer_to_server(service, registrar)  # type: ignore[no-untyped-call]
