from setuptools import find_packages, setup

setup(
    name="tdms",
    version="0.1.0",
    description="TDMS-Net (ACM MM 2020) for blind video temporal consistency",
    packages=find_packages(include=["tdms", "tdms.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy>=1.26",
        "scipy>=1.11",
        "opencv-contrib-python-headless>=4.10",
        "av>=18.1",
        "scikit-image>=0.22",
        "lpips>=0.1.4",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "tensorboard>=2.15",
        "matplotlib>=3.8",
    ],
    entry_points={
        "console_scripts": [
            "tdms-train=tdms.commands.train:main",
            "tdms-test=tdms.commands.test:main",
            "tdms-evaluate=tdms.commands.evaluate:main",
            "tdms-build-data=tdms.commands.build_data:main",
        ]
    },
)
