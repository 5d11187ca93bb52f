"""A Proxmox VE cluster as a real one behaves, for this backend's tests.

fakepve (the API simulator; AGPL, a test-only dependency: nothing of it is
copied here) answers like an idealised cluster. :class:`RealCluster` is an
HTTPS layer of ours in front of it that answers the way Proxmox's own code
does where fakepve is silent or idealised. Each behaviour lives in its own
class and cites the Proxmox source it reproduces:

- :class:`~pvesim.stats.Pvestatd`: ``/cluster/resources`` reports QEMU's run
  state (``paused``) and lags behind by a pvestatd cycle (10 s);
- :class:`~pvesim.ha.HaManager`: start, stop and shutdown of HA resources
  only hand the request to ha-manager, which acts later;
- :class:`~pvesim.shutdowns.Shutdowns`: a graceful shutdown holds the VM's
  config lock, so a plain stop waits and fails; ``overrule-shutdown``;
- :class:`~pvesim.vmids.VmidRace`: a clone checks its new VMID on the local
  node only, then locks it with a 1 s timeout inside its task;
- :class:`~pvesim.placement.Placement`: storages enabled on some nodes only,
  bridges per node, and the HTTP 500 of a plain ``die``;
- :class:`~pvesim.packages.Packages`: package versions per node, and the
  parameters older versions do not have;
- :class:`~pvesim.downloads.Downloads`: ``download-url`` as pve-storage runs
  it (checksums, existing files, the format taken from the extension);
- :class:`~pvesim.agent.AgentPending`: ``agent`` is not a hot-pluggable
  option;
- :class:`~pvesim.hotplug.Hotplug`: ``vcpus`` and ``memory`` of a running VM
  change at once where its ``hotplug`` allows (memory in whole DIMMs).
"""

from .cluster import RealCluster
from .serving import Serving, add_second_node_and_shared_dir, make_pki

__all__ = ["RealCluster", "Serving", "add_second_node_and_shared_dir", "make_pki"]
