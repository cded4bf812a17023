################################################################################
#
# lifeboat
#
################################################################################

# The Cargo workspace is the repository this br2-external tree lives in
# (buildroot/..), taken as it is on disk: no tarball, no download.
LIFEBOAT_SITE = $(BR2_EXTERNAL_LIFEBOAT_PATH)/..
LIFEBOAT_SITE_METHOD = local
# The workspace version, read the way image/build reads it. A release
# build may override it: make LIFEBOAT_VERSION=1.2.3
LIFEBOAT_VERSION = $(shell sed -n 's/^version = "\(.*\)"/\1/p' $(LIFEBOAT_SITE)/Cargo.toml | head -n 1)
LIFEBOAT_LICENSE = MIT
LIFEBOAT_LICENSE_FILES = LICENSE

# Build outputs, caches and test leftovers of a developer's checkout are
# not sources: keep them out of the copy in the build directory.
LIFEBOAT_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude=/target \
	--exclude=/fuzz/target \
	--exclude=/image/out \
	--exclude=/tests/artifacts \
	--exclude=/tests/browser/node_modules \
	--exclude=/lifeboat-data \
	--exclude=/output

# The kernel release goes into /etc/lifeboat-release, so the kernel is
# built first.
LIFEBOAT_DEPENDENCIES = $(if $(BR2_LINUX_KERNEL),linux)
LIFEBOAT_KERNEL_RELEASE = $(if $(BR2_LINUX_KERNEL),$(LINUX_VERSION_PROBED),unknown)

# Both binaries of the workspace, nothing else (the tests crate stays out).
LIFEBOAT_CARGO_BUILD_OPTS = -p lifeboat -p lifeboat-agent
# ring and zstd-sys compile C for the target with CC (the Buildroot
# cross compiler, from TARGET_CONFIGURE_OPTS); anything compiled for the
# build machine itself must not pick that compiler up.
LIFEBOAT_CARGO_ENV = HOST_CC="$(HOSTCC_NOCCACHE)"

# cargo-package vendors a package's crates in its download step, which
# the local site method skips. Vendor them here instead, into the build
# directory, so that the infrastructure's `cargo build --offline --locked`
# finds every crate of Cargo.lock. This step needs network access.
define LIFEBOAT_VENDOR_CRATES
	mkdir -p $(BR_CARGO_HOME) $(@D)/.cargo
	rm -f $(@D)/.cargo/config.toml
	cd $(@D) && $(TARGET_MAKE_ENV) $(PKG_COMMON_CARGO_ENV) \
		cargo vendor --locked VENDOR > $(@D)/.cargo/config.toml.new
	mv $(@D)/.cargo/config.toml.new $(@D)/.cargo/config.toml
endef
LIFEBOAT_PRE_BUILD_HOOKS += LIFEBOAT_VENDOR_CRATES

# cargo-package's default install runs `cargo install --path ./`, which
# a virtual workspace manifest cannot do; and the agent is not a program
# of the appliance but a file it serves. Install both where image/build
# puts them.
LIFEBOAT_BIN_DIR = $(@D)/target/$(RUSTC_TARGET_NAME)/$(if $(BR2_ENABLE_DEBUG),debug,release)

define LIFEBOAT_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(LIFEBOAT_BIN_DIR)/lifeboat \
		$(TARGET_DIR)/usr/bin/lifeboat
	$(INSTALL) -D -m 0755 $(LIFEBOAT_BIN_DIR)/lifeboat-agent \
		$(TARGET_DIR)/usr/share/lifeboat/lifeboat-agent
	mkdir -p $(TARGET_DIR)/etc
	kernel=$(LIFEBOAT_KERNEL_RELEASE); \
	printf 'VERSION=%s\nKERNEL=%s\n' '$(LIFEBOAT_VERSION)' "$$kernel" \
		> $(TARGET_DIR)/etc/lifeboat-release
endef

$(eval $(cargo-package))
