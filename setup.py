from setuptools import setup, find_packages
import shlex
from configparser import ConfigParser

# nbdev-template's setup.py, without its `pkg_resources` import: setuptools in a fresh PEP 517 build
# environment no longer ships pkg_resources, so that import breaks `pip install -e .`.
config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

cfg_keys = 'version description keywords author author_email'.split()
expected = cfg_keys + "lib_name user branch license status min_python audience language".split()
for o in expected: assert o in cfg, "missing expected setting: {}".format(o)
setup_cfg = {o: cfg[o] for o in cfg_keys}

licenses = {
    'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License'),
    'mit': ('MIT License', 'OSI Approved :: MIT License'),
}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
py_versions = '3.9 3.10 3.11 3.12 3.13'.split()

requirements = shlex.split(cfg.get('requirements', ''))
# the architecture search (scrfd_nb.search): Optuna runs the study; psycopg is SQLAlchemy's PostgreSQL driver for
# a study shared by machines (postgresql:// storage). An extra of its own, and part of dev, where the tests use both.
search_requirements = shlex.split(cfg.get('search_requirements', ''))
# the other runtimes of the deployment benchmark (scrfd_nb.backends, scrfd_nb.benchmark): OpenVINO runs the exported
# file on the CPU, NNCF makes its int8 model; ncnn (the phones' runtime) runs what pnnx converts. An extra of its own,
# and part of dev, where the tests check them.
deploy_requirements = shlex.split(cfg.get('deploy_requirements', ''))
dev_requirements = shlex.split(cfg.get('dev_requirements', '')) + search_requirements + deploy_requirements
# torch-npu pairs with the same torch release and needs Ascend CANN: without CANN it makes even
# `import torch` fail, so it is an opt-in extra and never part of the default or dev installs.
npu_requirements = ['torch-npu', 'pyyaml']
lic = licenses[cfg['license'].lower()]
min_python = cfg['min_python']
lib_path = cfg['lib_path']
requires_python = '>=' + min_python

setup(
    name=cfg['lib_name'],
    license=lic[0],
    classifiers=[
        'Development Status :: ' + statuses[int(cfg['status'])],
        'Intended Audience :: ' + cfg['audience'].title(),
        'License :: ' + lic[1],
        'Natural Language :: ' + cfg['language'].title(),
    ] + ['Programming Language :: Python :: ' + o for o in py_versions[py_versions.index(min_python):]],
    url=cfg['git_url'],
    packages=find_packages(include=[lib_path, lib_path + '.*']),
    include_package_data=True,
    install_requires=requirements,
    extras_require={'dev': dev_requirements, 'search': search_requirements, 'deploy': deploy_requirements,
                    'npu': npu_requirements},
    dependency_links=cfg.get('dep_links', '').split(),
    python_requires=requires_python,
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'nbdev': [f'{cfg.get("lib_path")}={cfg.get("lib_path")}._modidx:d']},
    **setup_cfg)
