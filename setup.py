from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent


def requirements(name):
    lines = (here / name).read_text().splitlines()
    return [l.strip() for l in lines if l.strip() and not l.startswith('#')]


setup(
    name='wan',
    version='0.1.0',
    description='Wan2.1 video generation (text-to-video, image-to-video, text-to-image) inference',
    long_description=(here / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['wan', 'wan.*']),
    python_requires='>=3.10',
    install_requires=requirements('requirements.txt'),
    extras_require={
        'test': requirements('requirements-dev.txt'),
        # Multi-GPU sequence parallelism (--ulysses_size / --ring_size); torch only.
        'multigpu': ['yunchang>=0.6.4'],
        # Optional xDiT attention on CUDA (WAN_SP_ATTENTION=xfuser); pulls diffusers.
        'xfuser': ['yunchang>=0.6.4', 'xfuser>=0.4.1'],
    },
)
