"""The provider.v1.Provider servicer: convert, dispatch, convert.

Each RPC parses its request into typed specs (JSON fields through
:mod:`provider_core.specs`), calls the :class:`~provider_core.runtime.Runtime`
and converts the result. No logic and no error handling here: errors are
mapped once, by :func:`provider_core.status.rpc`.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeAlias

import grpc
import orjson

from . import specs
from .capabilities import Capability
from .errors import InvalidArgument
from .models import (
    CloneSpec,
    CreateSpec,
    ExportSpec,
    ImagePrepareSpec,
    ImportSpec,
    PowerOp,
    SnapshotSpec,
)
from .pb import provider_pb2 as pb
from .pb import provider_pb2_grpc as pb_grpc
from .runtime import Runtime
from .status import rpc, tolerant_decoder

Ctx: TypeAlias = grpc.aio.ServicerContext

_POWER_OPS = {
    pb.POWER_OP_ON: PowerOp.ON,
    pb.POWER_OP_OFF: PowerOp.OFF,
    pb.POWER_OP_REBOOT: PowerOp.REBOOT,
    pb.POWER_OP_SHUTDOWN_GRACEFUL: PowerOp.SHUTDOWN_GRACEFUL,
}
DEFAULT_GRACEFUL_TIMEOUT = 60


def _task(task_id: str) -> pb.TaskRef | None:
    return pb.TaskRef(id=task_id) if task_id else None


_CONTROL = re.compile(r"[\x00-\x1f]")


def _required(field: str, value: str) -> str:
    if not value.strip():
        raise InvalidArgument.field(field, "is required")
    if _CONTROL.search(value):
        raise InvalidArgument.field(field, "contains control characters")
    return value


def _raw_json(raw: dict[str, Any]) -> str:
    """provider_raw_json: keys sorted, values JSON cannot hold as their str()."""
    try:
        return orjson.dumps(raw, default=str, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, say
        return json.dumps(raw, sort_keys=True, default=str)


def _checksum(field: str, value: str) -> str:
    value = value.strip().lower().removeprefix("sha256:")
    if value and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value)):
        raise InvalidArgument.field(field, "must be a SHA256 hex digest (64 hex digits)")
    return value


class ProviderService(pb_grpc.ProviderServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    @rpc
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
            supported_export_formats=list(offer.export_formats) if Capability.DISK_EXPORT in caps else [],
            supported_import_formats=list(offer.import_formats) if Capability.DISK_IMPORT in caps else [],
            supports_export_compression=Capability.EXPORT_COMPRESSION in caps,
        )

    @rpc
    async def Validate(self, request: pb.ValidateRequest, context: Ctx) -> pb.ValidateResponse:
        report = await self.rt.validate(context.time_remaining())
        return pb.ValidateResponse(ok=report.ok, message=report.message)

    @rpc
    async def Create(self, request: pb.CreateRequest, context: Ctx) -> pb.CreateResponse:
        spec = CreateSpec(
            name=_required("name", request.name),
            vm_class=specs.parse("class_json", request.class_json, specs.VMClass, specs.VMClass()),
            image=specs.parse("image_json", request.image_json, specs.VMImage, specs.VMImage()),
            networks=specs.parse("networks_json", request.networks_json, specs.NetworkList, []),
            disks=specs.parse("disks_json", request.disks_json, specs.DiskList, []),
            placement=specs.parse("placement_json", request.placement_json, specs.Placement, specs.Placement()),
            tags=list(request.tags),
            user_data=request.user_data,
            meta_data=request.meta_data,
        )
        vm_id, task = await self.rt.create(spec, context.time_remaining())
        return pb.CreateResponse(id=vm_id, task=_task(task))

    @rpc
    async def Describe(self, request: pb.DescribeRequest, context: Ctx) -> pb.DescribeResponse:
        status = await self.rt.describe(_required("id", request.id), context.time_remaining())
        if status is None:
            return pb.DescribeResponse(exists=False, power_state="Unknown")
        return pb.DescribeResponse(
            exists=True,
            power_state=status.power_state.value,
            ips=status.ips,
            console_url=status.console_url,
            provider_raw_json=_raw_json(status.raw),
        )

    @rpc
    async def ListVMs(self, request: pb.ListVMsRequest, context: Ctx) -> pb.ListVMsResponse:
        vms = await self.rt.list_vms(context.time_remaining())
        return pb.ListVMsResponse(
            vms=[
                pb.VMInfo(
                    id=vm.id,
                    name=vm.name,
                    power_state=vm.power_state.value,
                    ips=vm.ips,
                    cpu=vm.cpu,
                    memory_mib=vm.memory_mib,
                    disks=[pb.DiskInfo(id=d.id, path=d.path, size_gib=d.size_gib, format=d.format) for d in vm.disks],
                    networks=[pb.NetworkInfo(name=n.name, mac=n.mac, ip_address=n.ip_address) for n in vm.networks],
                    provider_raw=vm.raw,
                )
                for vm in vms
            ]
        )

    @rpc
    async def Power(self, request: pb.PowerRequest, context: Ctx) -> pb.TaskResponse:
        op = _POWER_OPS.get(request.op)
        if op is None:
            raise InvalidArgument.field("op", "must be POWER_OP_ON, POWER_OP_OFF, POWER_OP_REBOOT or POWER_OP_SHUTDOWN_GRACEFUL")
        if request.graceful_timeout_seconds < 0:
            raise InvalidArgument.field("graceful_timeout_seconds", "must not be negative")
        graceful = request.graceful_timeout_seconds or DEFAULT_GRACEFUL_TIMEOUT
        task = await self.rt.power(_required("id", request.id), op, float(graceful), context.time_remaining())
        return pb.TaskResponse(task=_task(task))

    @rpc
    async def Delete(self, request: pb.DeleteRequest, context: Ctx) -> pb.TaskResponse:
        task = await self.rt.delete(_required("id", request.id), context.time_remaining())
        return pb.TaskResponse(task=_task(task))

    @rpc
    async def Reconfigure(self, request: pb.ReconfigureRequest, context: Ctx) -> pb.TaskResponse:
        self.rt.require(Capability.RECONFIGURE)
        vm_id = _required("id", request.id)
        desired = specs.parse("desired_json", _required("desired_json", request.desired_json), specs.DesiredVM)
        task = await self.rt.reconfigure(vm_id, desired, context.time_remaining())
        return pb.TaskResponse(task=_task(task))

    @rpc
    async def SnapshotCreate(self, request: pb.SnapshotCreateRequest, context: Ctx) -> pb.SnapshotCreateResponse:
        self.rt.require(Capability.SNAPSHOTS)
        spec = SnapshotSpec(
            vm_id=_required("vm_id", request.vm_id),
            name=request.name_hint.strip(),
            description=request.description,
            include_memory=request.include_memory,
        )
        snap_id, task = await self.rt.snapshot_create(spec, context.time_remaining())
        return pb.SnapshotCreateResponse(snapshot_id=snap_id, task=_task(task))

    @rpc
    async def SnapshotRevert(self, request: pb.SnapshotRevertRequest, context: Ctx) -> pb.TaskResponse:
        self.rt.require(Capability.SNAPSHOTS)
        vm_id, snap = _required("vm_id", request.vm_id), _required("snapshot_id", request.snapshot_id)
        task = await self.rt.snapshot_revert(vm_id, snap, context.time_remaining())
        return pb.TaskResponse(task=_task(task))

    @rpc
    async def SnapshotDelete(self, request: pb.SnapshotDeleteRequest, context: Ctx) -> pb.TaskResponse:
        self.rt.require(Capability.SNAPSHOTS)
        vm_id, snap = _required("vm_id", request.vm_id), _required("snapshot_id", request.snapshot_id)
        task = await self.rt.snapshot_delete(vm_id, snap, context.time_remaining())
        return pb.TaskResponse(task=_task(task))

    @rpc
    async def Clone(self, request: pb.CloneRequest, context: Ctx) -> pb.CloneResponse:
        self.rt.require(Capability.CLONE)
        spec = CloneSpec(
            source_vm_id=_required("source_vm_id", request.source_vm_id),
            target_name=_required("target_name", request.target_name),
            linked=request.linked,
            vm_class=specs.parse("class_json", request.class_json, specs.VMClass, specs.VMClass()),
            placement=specs.parse("placement_json", request.placement_json, specs.Placement, specs.Placement()),
            customize=specs.parse("customize_json", request.customize_json, specs.Customization, specs.Customization()),
        )
        vm_id, task = await self.rt.clone(spec, context.time_remaining())
        return pb.CloneResponse(target_vm_id=vm_id, task=_task(task))

    @rpc
    async def ImagePrepare(self, request: pb.ImagePrepareRequest, context: Ctx) -> pb.TaskResponse:
        self.rt.require(Capability.IMAGE_PREPARE)
        image = specs.parse("image_json", _required("image_json", request.image_json), specs.VMImage)
        if image.source == "blank":
            raise InvalidArgument.field("image_json", "names no image: give URL, Path or TemplateName")
        spec = ImagePrepareSpec(
            image=image, target_name=_required("target_name", request.target_name), storage_hint=request.storage_hint
        )
        task = await self.rt.image_prepare(spec, context.time_remaining())
        return pb.TaskResponse(task=_task(task))

    @rpc
    async def GetDiskInfo(self, request: pb.GetDiskInfoRequest, context: Ctx) -> pb.GetDiskInfoResponse:
        self.rt.require(Capability.DISK_INFO)
        vm_id = _required("vm_id", request.vm_id)
        d = await self.rt.disk_info(vm_id, request.disk_id, request.snapshot_id, context.time_remaining())
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

    @rpc
    async def ExportDisk(self, request: pb.ExportDiskRequest, context: Ctx) -> pb.ExportDiskResponse:
        self.rt.require(Capability.DISK_EXPORT)
        url = _required("destination_url", request.destination_url)
        try:
            specs.check_url(url, ("http", "https", "s3") if url.startswith("s3:") else ("http", "https"))
        except ValueError as exc:
            raise InvalidArgument.field("destination_url", str(exc)) from None
        spec = ExportSpec(
            vm_id=_required("vm_id", request.vm_id),
            disk_id=request.disk_id,
            snapshot_id=request.snapshot_id,
            destination_url=url,
            format=(request.format or "qcow2").lower(),
            compress=request.compress,
            credentials=dict(request.credentials),
        )
        result, task = await self.rt.export_disk(spec, context.time_remaining())
        return pb.ExportDiskResponse(
            export_id=result.export_id,
            task=_task(task),
            estimated_size_bytes=result.estimated_size_bytes,
            checksum=result.checksum,
        )

    @rpc
    async def ImportDisk(self, request: pb.ImportDiskRequest, context: Ctx) -> pb.ImportDiskResponse:
        self.rt.require(Capability.DISK_IMPORT)
        url = _required("source_url", request.source_url)
        try:
            specs.check_url(url, ("http", "https", "s3") if url.startswith("s3:") else ("http", "https"))
        except ValueError as exc:
            raise InvalidArgument.field("source_url", str(exc)) from None
        expected = _checksum("expected_checksum", request.expected_checksum)
        if request.verify_checksum and not expected:
            raise InvalidArgument.field("expected_checksum", "is required when verify_checksum is set")
        spec = ImportSpec(
            source_url=url,
            storage_hint=request.storage_hint,
            format=(request.format or "qcow2").lower(),
            target_name=_required("target_name", request.target_name),
            verify_checksum=request.verify_checksum,
            expected_checksum=expected,
            credentials=dict(request.credentials),
        )
        result, task = await self.rt.import_disk(spec, context.time_remaining())
        return pb.ImportDiskResponse(
            disk_id=result.disk_id,
            path=result.path,
            task=_task(task),
            actual_size_bytes=result.actual_size_bytes,
            checksum=result.checksum,
        )

    @rpc
    async def HardwareUpgrade(self, request: pb.HardwareUpgradeRequest, context: Ctx) -> pb.TaskResponse:
        self.rt.require(Capability.HARDWARE_UPGRADE)
        vm_id = _required("id", request.id)
        if request.target_version < 0:
            raise InvalidArgument.field("target_version", "must not be negative")
        task = await self.rt.hardware_upgrade(vm_id, request.target_version, context.time_remaining())
        return pb.TaskResponse(task=_task(task))

    @rpc
    async def TaskStatus(self, request: pb.TaskStatusRequest, context: Ctx) -> pb.TaskStatusResponse:
        state = await self.rt.task_status(request.task.id, context.time_remaining())
        return pb.TaskStatusResponse(done=state.done, error=state.error)


def add_to_server(service: ProviderService, server: grpc.aio.Server) -> None:
    """Register ``service`` like the generated ``add_ProviderServicer_to_server``,
    with request decoders that turn corrupt bytes into INVALID_ARGUMENT."""
    descriptor = pb.DESCRIPTOR.services_by_name["Provider"]
    handlers = {
        m.name: grpc.unary_unary_rpc_method_handler(
            getattr(service, m.name),
            request_deserializer=tolerant_decoder(getattr(pb, m.input_type.name)),
            response_serializer=getattr(pb, m.output_type.name).SerializeToString,
        )
        for m in descriptor.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(descriptor.full_name, handlers),))
    server.add_registered_method_handlers(descriptor.full_name, handlers)
