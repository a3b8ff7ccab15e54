"""tdms: TDMS-Net for blind video temporal consistency."""

__version__ = "0.1.0"
