//! Who is calling: the kernel's record of a connection ([`attribution`]), the cgroup it came
//! from ([`cgroup`]: the cgroup2 mount, the attach point and the cgroup-id index) and the pod
//! that cgroup belongs to ([`pod_identity`]). A caller is named from its cgroup, never its IP.

pub(crate) mod attribution;
pub(crate) mod cgroup;
pub(crate) mod pod_identity;
