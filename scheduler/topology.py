"""Accounts and instances as the config describes them, looked up by id."""

from __future__ import annotations

from dataclasses import dataclass

from .amc.client import AccountRef
from .config import AccountSettings, Settings
from .store.queue import AccountLimits, InstanceLimit


@dataclass(frozen=True)
class Topology:
    accounts: dict[str, AccountSettings]
    instance_accounts: dict[str, str]

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        return cls(
            accounts={account.id: account for account in settings.accounts},
            instance_accounts={
                instance.id: account.id for account, instance in settings.instances()
            },
        )

    @property
    def instance_ids(self) -> list[str]:
        return list(self.instance_accounts)

    def account_of(self, instance_id: str) -> AccountSettings | None:
        account_id = self.instance_accounts.get(instance_id)
        return self.accounts.get(account_id) if account_id else None

    def ref(self, account_id: str) -> AccountRef | None:
        account = self.accounts.get(account_id)
        if account is None:
            return None

        return AccountRef(account.id, account.marketplace_id)

    def limits(self, account_id: str) -> AccountLimits:
        account = self.accounts[account_id]
        return AccountLimits(
            account.id,
            account.max_parallel,
            tuple(InstanceLimit(i.id, i.max_parallel) for i in account.instances),
        )

    def instances_of(self, account_id: str) -> list[str]:
        return [i for i, a in self.instance_accounts.items() if a == account_id]
