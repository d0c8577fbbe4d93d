"""hessian_lib: Hessian/GGN spectra and learning-rate scaling for the JMLR 2022 companion book."""

from hessian_lib.data import CIFAR100Split, DataError, load_cifar100, normalize, resolve_data_root, stratified_indices
from hessian_lib.profiles import PROFILES, Profile, ProfileError, load_profile, profile_names

__version__ = "0.1.0"
